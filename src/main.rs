//! chat-service: read the configuration, open the store, serve until
//! SIGTERM/SIGINT, then drain and exit 0.

use std::cell::Cell;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::net::TcpSocket;
use tracing_subscriber::EnvFilter;

use chat_service::app::App;
use chat_service::config::{Config, LogFormat};
use chat_service::server;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's `mi_collect` (linked through the `mimalloc` crate): gives
    /// the OS back what the calling thread's heap holds free; `true` does
    /// it now rather than after mimalloc's purge delay.
    fn mi_collect(force: bool);
}

/// How often at most a runtime thread that runs out of work trims its heap.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Runs when a runtime thread parks. mimalloc returns freed pages to the OS
/// only when the thread that freed them calls into it again, so a worker
/// that goes quiet after a burst (a connect storm: hyper buffers, Django
/// look-ups) would keep the burst's garbage resident for as long as the
/// connections stay idle.
fn trim_when_idle() {
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    LAST.with(|last| {
        if last
            .get()
            .is_none_or(|at| now.duration_since(at) >= TRIM_EVERY)
        {
            last.set(Some(now));
            // SAFETY: mi_collect takes no pointers and may be called from
            // any thread at any time.
            unsafe { mi_collect(true) };
        }
    });
}

/// Pending connections the kernel queues for us: a connect storm of
/// thousands must not see refusals before `accept` catches up.
const LISTEN_BACKLOG: u32 = 8192;

fn main() -> ExitCode {
    let config = Config::parse();
    let filter = match EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("error: invalid CHAT_LOG {:?}: {error}", config.log);
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match config.log_format {
        // One object per line; the connection's span (user, role,
        // conversation) is in every line it encloses.
        LogFormat::Json => {
            logs.json().with_current_span(true).init();
            // A panic (the SQLite readers survive one) as a JSON line too,
            // not as the default hook's plain text on stderr.
            std::panic::set_hook(Box::new(|panic| tracing::error!(%panic, "panic")));
        }
        // Colour codes only for a person at a terminal: in a file, a pipe
        // or a log collector they are noise.
        LogFormat::Text => logs.with_ansi(std::io::stdout().is_terminal()).init(),
    }
    disable_transparent_huge_pages();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(trim_when_idle)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = match listen(addr) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%addr, %error, "cannot listen (PORT / CHAT_BIND)");
            return ExitCode::FAILURE;
        }
    };
    let (app, background) = match App::build(config).await {
        Ok(built) => built,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        addr = %local,
        store = app.store.kind(),
        shards = app.config.shard_count(),
        max_connections = app.gate.max(),
        "listening"
    );
    let report = server::run(listener, app, background, shutdown_signal()).await;
    // Two counts, so "nothing in the final flush" does not read as
    // "nothing stored": most writes were stored long before shutdown.
    tracing::info!(
        written_total = report.flush.written_total,
        final_flush_written = report.flush.written,
        unwritten = report.flush.unwritten,
        sessions_left = report.sessions_left,
        "stopped"
    );
    if report.flush.unwritten > 0 {
        tracing::error!(
            unwritten = report.flush.unwritten,
            "writes were not stored before the deadline; they were never acknowledged"
        );
    }
    ExitCode::SUCCESS
}

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot watch SIGTERM; only SIGINT stops the service");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// Huge pages would turn each connection's few touched bytes into 2 MiB
/// resident chunks; per-connection memory is what this service is about.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and affects only this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Transparent huge pages, and the per-process switch to refuse them, are
/// Linux's: elsewhere there is nothing to turn off.
#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}
