//! Response bodies: whole, dribbled slowly, or huge and generated as sent.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// Response bodies: whole, dribbled, or generated on the fly.
pub(crate) enum Payload {
    Full(Option<Bytes>),
    Dribble(Dribble),
    Huge(Huge),
    Pattern(Pattern),
}

impl Payload {
    pub(crate) fn full(body: impl Into<Bytes>) -> Payload {
        let body = body.into();
        Payload::Full((!body.is_empty()).then_some(body))
    }
}

/// The rest of a body, sent `chunk` bytes every `every`. If the client goes
/// away, hyper drops it and the timer with it.
pub(crate) struct Dribble {
    pub(crate) data: Bytes,
    pub(crate) chunk: usize,
    pub(crate) every: Duration,
    pub(crate) sleep: Pin<Box<tokio::time::Sleep>>,
}

/// A body of `total` bytes made up as it is sent, so a huge one costs no
/// memory.
pub(crate) struct Huge {
    pub(crate) total: usize,
    pub(crate) pos: usize,
    pub(crate) chunked: bool,
}

pub(crate) const HUGE_PREFIX: &[u8] = br#"{"username":"huge","padding":""#;
pub(crate) const HUGE_SUFFIX: &[u8] = br#""}"#;
pub(crate) static HUGE_FILL: [u8; 16 * 1024] = [b'x'; 16 * 1024];

impl Huge {
    pub(crate) fn next_chunk(&mut self) -> Option<Bytes> {
        if self.pos >= self.total {
            return None;
        }
        let framed = self.total >= HUGE_PREFIX.len() + HUGE_SUFFIX.len();
        let (prefix, suffix) = if framed {
            (HUGE_PREFIX.len(), HUGE_SUFFIX.len())
        } else {
            (0, 0)
        };
        let fill_end = self.total - suffix;
        let chunk = if self.pos < prefix {
            Bytes::from_static(&HUGE_PREFIX[self.pos..])
        } else if self.pos < fill_end {
            let n = (fill_end - self.pos).min(HUGE_FILL.len());
            Bytes::from_static(&HUGE_FILL[..n])
        } else {
            Bytes::from_static(&HUGE_SUFFIX[self.pos - fill_end..])
        };
        self.pos += chunk.len();
        Some(chunk)
    }
}

/// `GET /v1.0/bytes/{n}`: `total` bytes of [`crate::BYTES_PATTERN`]
/// repeated, made up as they are sent (16 KiB at a time), so any size costs
/// no memory.
pub(crate) struct Pattern {
    pub(crate) total: u64,
    pub(crate) pos: u64,
    pub(crate) chunked: bool,
}

/// The pattern, 16 KiB of it: every chunk starts at a multiple of its period.
static PATTERN_FILL: [u8; 16 * 1024] = {
    let pattern = crate::model::BYTES_PATTERN;
    let mut fill = [0u8; 16 * 1024];
    let mut i = 0;
    while i < fill.len() {
        fill[i] = pattern[i % pattern.len()];
        i += 1;
    }
    fill
};

impl Pattern {
    fn next_chunk(&mut self) -> Option<Bytes> {
        let left = self.total.saturating_sub(self.pos);
        if left == 0 {
            return None;
        }
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(PATTERN_FILL.len());
        self.pos += n as u64;
        Some(Bytes::from_static(&PATTERN_FILL[..n]))
    }
}

impl Body for Payload {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Payload::Full(data) => Poll::Ready(data.take().map(|b| Ok(Frame::data(b)))),
            Payload::Dribble(d) => {
                if d.data.is_empty() {
                    return Poll::Ready(None);
                }
                ready!(d.sleep.as_mut().poll(cx));
                let piece = d.data.split_to(d.chunk.min(d.data.len()));
                let next = tokio::time::Instant::now() + d.every;
                d.sleep.as_mut().reset(next);
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            Payload::Huge(h) => Poll::Ready(h.next_chunk().map(|b| Ok(Frame::data(b)))),
            Payload::Pattern(p) => Poll::Ready(p.next_chunk().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Payload::Full(data) => data.is_none(),
            Payload::Dribble(d) => d.data.is_empty(),
            Payload::Huge(h) => h.pos >= h.total,
            Payload::Pattern(p) => p.pos >= p.total,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Payload::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |b| b.len() as u64)),
            Payload::Dribble(d) => SizeHint::with_exact(d.data.len() as u64),
            Payload::Huge(h) if h.chunked => SizeHint::default(),
            Payload::Huge(h) => SizeHint::with_exact((h.total - h.pos.min(h.total)) as u64),
            Payload::Pattern(p) if p.chunked => SizeHint::default(),
            Payload::Pattern(p) => SizeHint::with_exact(p.total.saturating_sub(p.pos)),
        }
    }
}
