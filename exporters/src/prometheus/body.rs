//! The scrape's HTTP body: the exposition rendered one slice at a time,
//! when hyper asks for the next frame — i.e. when the client has taken the
//! previous ones.
//!
//! Promises: a scrape holds one slice of text ([`SLICE_BYTES`] and the
//! line that crosses it), one outgoing frame, and with gzip one deflate
//! state, whatever the number of agents; both buffers are reused from
//! slice to slice (the frame's allocation is taken back once hyper has
//! written and dropped it). Rendering a slice is a bounded piece of CPU
//! work on the runtime, never a wait: a slow client only makes the scrape
//! take longer, it never holds a thread. gzip is streamed (one gzip member
//! for the whole body). A failure to compress ends the body with an error
//! (the client sees a cut response) and is counted in `scrape_failures`.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::buf::Writer;
use bytes::{BufMut, Bytes, BytesMut};
use flate2::write::GzEncoder;
use hyper::body::{Body, Frame, SizeHint};

use super::scrape::{Exposition, SLICE_BYTES};
use super::stats::HttpStats;

/// One scrape's body.
pub struct ScrapeBody {
    exposition: Exposition,
    /// The slice being rendered.
    text: Vec<u8>,
    /// Plain text frames are cut from here.
    out: BytesMut,
    gzip: Option<GzEncoder<Writer<BytesMut>>>,
    done: bool,
    stats: Arc<HttpStats>,
}

impl std::fmt::Debug for ScrapeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeBody").field("gzip", &self.gzip.is_some()).field("done", &self.done).finish()
    }
}

impl ScrapeBody {
    pub fn new(exposition: Exposition, gzip: bool, stats: Arc<HttpStats>) -> ScrapeBody {
        ScrapeBody {
            exposition,
            text: Vec::with_capacity(SLICE_BYTES + 1024),
            // Room for two frames: the next is cut behind the previous or,
            // once hyper has dropped that, from the front again.
            out: if gzip { BytesMut::new() } else { BytesMut::with_capacity(2 * SLICE_BYTES + 8192) },
            gzip: gzip.then(|| {
                GzEncoder::new(BytesMut::with_capacity(SLICE_BYTES / 4).writer(), flate2::Compression::fast())
            }),
            done: false,
            stats,
        }
    }

    /// The next frame, `None` at the end.
    fn next_frame(&mut self) -> Option<std::io::Result<Bytes>> {
        while !self.done {
            self.text.clear();
            let more = self.exposition.fill(&mut self.text, SLICE_BYTES);
            self.done = !more;
            let frame = match &mut self.gzip {
                None => {
                    self.out.reserve(self.text.len());
                    self.out.extend_from_slice(&self.text);
                    self.out.split().freeze()
                }
                Some(z) => {
                    z.get_mut().get_mut().reserve(SLICE_BYTES / 4);
                    let written =
                        z.write_all(&self.text).and_then(|()| if more { Ok(()) } else { z.try_finish() });
                    if let Err(e) = written {
                        self.done = true;
                        self.stats.count_scrape_failure();
                        tracing::error!("cannot compress metrics: {e}");
                        return Some(Err(e));
                    }
                    z.get_mut().get_mut().split().freeze()
                }
            };
            if !frame.is_empty() {
                return Some(Ok(frame));
            }
        }
        None
    }
}

impl Drop for ScrapeBody {
    /// A scrape's buffers and the collector-family text it rendered are
    /// freed on a runtime worker's arena; hand those pages back (see
    /// [`crate::trim`]: at most once a second for the whole process).
    fn drop(&mut self) {
        self.text = Vec::new();
        self.out = BytesMut::new();
        self.gzip = None;
        crate::trim::release_freed_memory();
    }
}

impl Body for ScrapeBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().next_frame().map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    use crate::prometheus::scrape::tests::families;

    fn frames(body: &mut ScrapeBody) -> Vec<Bytes> {
        std::iter::from_fn(|| body.next_frame().map(|r| r.expect("frame"))).collect()
    }

    #[test]
    fn a_large_scrape_is_sent_in_bounded_frames_from_reused_buffers() {
        let (f, _keep) = families(&[("a", 3_000)], 100_000);
        let stats = Arc::new(HttpStats::default());
        let mut plain = ScrapeBody::new(f.scrape().expect("scrape"), false, stats.clone());
        let mut sent = Vec::new();
        let mut at = std::collections::HashSet::new();
        let mut n = 0;
        while let Some(frame) = plain.next_frame() {
            let frame = frame.expect("frame");
            assert!(frame.len() < SLICE_BYTES + 1024, "one slice per frame: {}", frame.len());
            at.insert(frame.as_ptr() as usize);
            sent.extend_from_slice(&frame);
            n += 1;
        }
        assert!(plain.is_end_stream());
        assert!(n > 10, "{n} frames");
        // Once hyper has dropped a frame, the next is cut from the same
        // allocation (its front, or right behind the previous frame).
        let spread = at.iter().max().zip(at.iter().min()).map_or(0, |(hi, lo)| hi - lo);
        assert!(spread < 2 * SLICE_BYTES + 8192, "{n} frames spread over {spread} bytes");
        let text = String::from_utf8(sent).expect("utf-8");
        assert_eq!(text.lines().filter(|l| l.starts_with("varta_status{")).count(), 3_000);

        let mut gz = ScrapeBody::new(f.scrape().expect("scrape"), true, stats.clone());
        let zipped: Vec<u8> = frames(&mut gz).concat();
        let mut unzipped = String::new();
        flate2::read::GzDecoder::new(zipped.as_slice())
            .read_to_string(&mut unzipped)
            .expect("one gzip stream");
        let steady = |t: &str| -> Vec<String> {
            t.lines().filter(|l| !l.starts_with("varta_watch_uptime_seconds ")).map(str::to_owned).collect()
        };
        assert!(steady(&unzipped) == steady(&text), "gzip carries the same exposition");
        assert!(zipped.len() * 5 < text.len(), "{} of {}", zipped.len(), text.len());
    }
}
