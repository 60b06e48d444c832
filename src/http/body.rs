//! The one response body type: a complete buffer, handed to hyper in
//! frames, that may own a permit (see `HistoryGate`) until it is written.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::body::{Frame, SizeHint};

/// Largest frame handed to hyper at once. hyper takes the next frame only
/// when its write buffer (64 KiB, see `server.rs`) has room, so a body read
/// slowly stays here, permit and all, until nearly all of it is written.
/// A body larger than one frame is handed over in copies: a slice would
/// keep the whole buffer alive in hyper's queue after the permit is gone.
const FRAME_BYTES: usize = 16 * 1024;

#[derive(Default)]
pub(crate) struct Body {
    rest: Bytes,
    /// `rest` was larger than one frame: hand it over in copies.
    copied: bool,
    /// Held until the body is written: a history permit.
    permit: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("rest", &self.rest.len())
            .field("permit", &self.permit.is_some())
            .finish()
    }
}

impl Body {
    pub(crate) fn new(bytes: impl Into<Bytes>) -> Body {
        let rest = bytes.into();
        Body {
            copied: rest.len() > FRAME_BYTES,
            rest,
            permit: None,
        }
    }

    /// `bytes`, holding `permit` until the last frame is taken or the body
    /// is dropped (the client went away).
    pub(crate) fn with_permit(bytes: impl Into<Bytes>, permit: impl Send + Sync + 'static) -> Body {
        Body {
            permit: Some(Box::new(permit)),
            ..Body::new(bytes)
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::new(bytes)
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        Body::new(bytes)
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Body {
        Body::new(text)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            this.permit = None;
            return Poll::Ready(None);
        }
        let frame = if this.copied {
            let n = this.rest.len().min(FRAME_BYTES);
            let frame = Bytes::copy_from_slice(&this.rest[..n]);
            this.rest.advance(n);
            frame
        } else {
            std::mem::take(&mut this.rest)
        };
        if this.rest.is_empty() {
            // An emptied slice still holds the buffer: free it with the permit.
            this.rest = Bytes::new();
            this.permit = None;
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Body as _;
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    #[tokio::test]
    async fn a_body_yields_its_bytes_and_releases_its_permit_with_the_last_frame() {
        let semaphore = Arc::new(Semaphore::new(1));
        let data: Vec<u8> = (0..FRAME_BYTES * 2 + 5).map(|n| n as u8).collect();
        let permit = Arc::clone(&semaphore).try_acquire_owned().unwrap();
        let mut body = Body::with_permit(data.clone(), permit);
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64));

        let mut received = Vec::new();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap().into_data().unwrap();
            assert!(frame.len() <= FRAME_BYTES);
            received.extend_from_slice(&frame);
            frames += 1;
            let last = received.len() == data.len();
            assert_eq!(
                semaphore.available_permits(),
                usize::from(last),
                "held until the last frame is taken"
            );
            assert_eq!(body.is_end_stream(), last);
        }
        assert_eq!(received, data);
        assert_eq!(frames, 3);
    }

    #[tokio::test]
    async fn dropping_a_body_releases_its_permit() {
        let semaphore = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&semaphore).try_acquire_owned().unwrap();
        let body = Body::with_permit(vec![b'x'; 100], permit);
        assert_eq!(semaphore.available_permits(), 0);
        drop(body);
        assert_eq!(semaphore.available_permits(), 1);
    }

    #[tokio::test]
    async fn small_and_empty_bodies() {
        let body = Body::from("{}");
        assert_eq!(body.collect().await.unwrap().to_bytes(), "{}");
        let empty = Body::default();
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
        assert!(empty.collect().await.unwrap().to_bytes().is_empty());
    }
}
