//! Opening one client WebSocket: TCP from a chosen source address, then the HTTP upgrade.
//!
//! The upgrade is written by hand rather than through hyper's client so the
//! generator keeps the plain `TcpStream` and can split it into owned halves
//! (no lock per poll) and so a refused upgrade's status (401, 503, …) is visible.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Why a connection was not established; its label keys the report's failure counts.
#[derive(Debug)]
pub enum ConnectFailure {
    /// The server answered the upgrade with this HTTP status.
    Status(u16),
    Timeout,
    Refused,
    /// The server closed before answering.
    Eof,
    BadResponse,
    Io(io::ErrorKind),
}

impl ConnectFailure {
    pub fn label(&self) -> String {
        match self {
            ConnectFailure::Status(code) => format!("http_{code}"),
            ConnectFailure::Timeout => "timeout".into(),
            ConnectFailure::Refused => "refused".into(),
            ConnectFailure::Eof => "eof".into(),
            ConnectFailure::BadResponse => "bad_response".into(),
            ConnectFailure::Io(kind) => format!("io_{kind:?}").to_lowercase(),
        }
    }
}

impl From<io::Error> for ConnectFailure {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            io::ErrorKind::TimedOut => ConnectFailure::Timeout,
            io::ErrorKind::UnexpectedEof => ConnectFailure::Eof,
            kind => ConnectFailure::Io(kind),
        }
    }
}

/// Longest upgrade response head accepted.
const MAX_HEAD: usize = 8192;

/// Connects to `target` from `source` (when given) and upgrades `path_and_query` to WebSocket.
pub async fn open(
    target: SocketAddr,
    source: Option<Ipv4Addr>,
    path_and_query: &str,
    timeout: Duration,
) -> Result<TcpStream, ConnectFailure> {
    tokio::time::timeout(timeout, open_inner(target, source, path_and_query))
        .await
        .map_err(|_| ConnectFailure::Timeout)?
}

async fn open_inner(
    target: SocketAddr,
    source: Option<Ipv4Addr>,
    path_and_query: &str,
) -> Result<TcpStream, ConnectFailure> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let (Some(ip), SocketAddr::V4(_)) = (source, target) {
        defer_port_choice(&socket);
        socket.bind(SocketAddr::from((ip, 0)))?;
    }
    let mut stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;

    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        websocket_key()
    );
    stream.write_all(request.as_bytes()).await?;
    let head = read_response_head(&mut stream).await?;
    match status_of(&head) {
        Some(101) => Ok(stream),
        Some(code) => Err(ConnectFailure::Status(code)),
        None => Err(ConnectFailure::BadResponse),
    }
}

/// Lets the kernel pick the source port at `connect` (by the full 4-tuple), not
/// at `bind`, so one source address is not limited to one socket per port.
fn defer_port_choice(socket: &TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket descriptor and a c_int option value of the declared size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

fn websocket_key() -> String {
    // The key only has to differ between connections; the server does not check randomness.
    let nanos = crate::clock::now_nanos();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&nanos.to_le_bytes());
    bytes[8..].copy_from_slice(&(nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Reads exactly the response head, leaving any WebSocket frames that follow
/// it in the socket: peeking first means nothing past `\r\n\r\n` is consumed.
async fn read_response_head(stream: &mut TcpStream) -> Result<Vec<u8>, ConnectFailure> {
    let mut head = Vec::with_capacity(256);
    let mut peeked = [0u8; 1024];
    loop {
        let n = stream.peek(&mut peeked).await?;
        if n == 0 {
            return Err(ConnectFailure::Eof);
        }
        let search_from = head.len().saturating_sub(3);
        let before = head.len();
        head.extend_from_slice(&peeked[..n]);
        if let Some(at) = head[search_from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            let end = search_from + at + 4;
            head.truncate(end);
            stream.read_exact(&mut peeked[..end - before]).await?;
            return Ok(head);
        }
        stream.read_exact(&mut peeked[..n]).await?;
        if head.len() > MAX_HEAD {
            return Err(ConnectFailure::BadResponse);
        }
    }
}

fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let mut parts = line.split(|&b| b == b' ');
    let version = parts.next()?;
    if !version.starts_with(b"HTTP/1.") {
        return None;
    }
    std::str::from_utf8(parts.next()?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_status_lines() {
        assert_eq!(
            status_of(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Some(101)
        );
        assert_eq!(
            status_of(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_of(b"SSH-2.0\r\n"), None);
    }

    #[tokio::test]
    async fn head_is_read_exactly_leaving_frames_in_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            // Head split over two writes, with a frame right behind it.
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(b"\n\r\n\x81\x02hi").await.unwrap();
            s
        });
        let mut stream = open(
            addr,
            Some(Ipv4Addr::new(127, 0, 0, 2)),
            "/ws",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(
            stream.local_addr().unwrap().ip(),
            std::net::IpAddr::from([127, 0, 0, 2])
        );
        let mut frame = [0u8; 4];
        stream.read_exact(&mut frame).await.unwrap();
        assert_eq!(&frame, b"\x81\x02hi");
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn refused_upgrade_reports_its_status() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let err = open(addr, None, "/ws", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.label(), "http_503");
    }
}
