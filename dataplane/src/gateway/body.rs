//! Incremental body decoding and re-framing.
//!
//! [`BodyReader`] turns whatever bytes of a connection are buffered into the
//! next piece of body data without waiting and without copying: it says how
//! many framing bytes to skip and how many data bytes follow. The chunked
//! decoder keeps its state between calls, so a body arrives in pieces of any
//! size, split anywhere, and is never held whole:
//!
//! ```text
//! chunked-body = *( chunk-size [ ext ] CRLF  chunk-data CRLF )
//!                "0" [ ext ] CRLF  *( trailer-field CRLF )  CRLF
//!
//! state:  Size ──size>0──▶ Data(n) ──n bytes──▶ DataEnd ──CRLF──▶ Size
//!           └──size=0──▶ Trailer ──empty line──▶ Done
//! ```
//!
//! Chunk sizes are parsed by `httparse::parse_chunk_size`; trailer fields are
//! dropped (the gateway forwards none). [`BodyWriter`] frames data for the
//! other side: unchanged, or as chunks.

use std::io::Write as _;

use super::http::Framing;

/// Longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section.
const MAX_TRAILERS: usize = 64 * 1024;

/// A body that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// A chunk-size line that is not hex digits, extensions and CRLF.
    #[error("invalid chunk size line")]
    InvalidChunkSize,
    /// A chunk-size line longer than the limit.
    #[error("chunk size line longer than {limit} bytes")]
    ChunkLineTooLong {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// Chunk data not followed by CRLF.
    #[error("chunk data not terminated by CRLF")]
    MissingChunkTerminator,
    /// The trailer section exceeds the limit.
    #[error("chunked trailer section longer than {limit} bytes")]
    TrailersTooLong {
        /// The limit that was exceeded.
        limit: usize,
    },
}

/// What the buffered input yields next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Skip `skip` framing bytes, then `len` (> 0) bytes of data follow;
    /// consume `skip + len`.
    Data {
        /// Framing bytes before the data.
        skip: usize,
        /// Data bytes.
        len: usize,
    },
    /// `consumed` framing bytes were used; more input is needed.
    NeedMore {
        /// Framing bytes to consume.
        consumed: usize,
    },
    /// The body ended after `consumed` framing bytes.
    Done {
        /// Framing bytes to consume.
        consumed: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

/// Incremental decoder of a chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

fn clamp(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: ChunkState::Size,
            trailer_bytes: 0,
        }
    }

    /// Decodes from `input` (the unconsumed buffered bytes).
    pub fn step(&mut self, input: &[u8]) -> Result<Step, BodyError> {
        let mut pos = 0;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            match self.state {
                ChunkState::Size => {
                    let Some(first) = rest.first() else {
                        return Ok(Step::NeedMore { consumed: pos });
                    };
                    // parse_chunk_size accepts an empty size; RFC 9112 does not.
                    if !first.is_ascii_hexdigit() {
                        return Err(BodyError::InvalidChunkSize);
                    }
                    match httparse::parse_chunk_size(rest) {
                        Ok(httparse::Status::Complete((n, size))) => {
                            pos += n;
                            self.state = if size == 0 {
                                ChunkState::Trailer
                            } else {
                                ChunkState::Data(size)
                            };
                        }
                        Ok(httparse::Status::Partial) if rest.len() > MAX_CHUNK_LINE => {
                            return Err(BodyError::ChunkLineTooLong {
                                limit: MAX_CHUNK_LINE,
                            })
                        }
                        Ok(httparse::Status::Partial) => {
                            return Ok(Step::NeedMore { consumed: pos })
                        }
                        Err(httparse::InvalidChunkSize) => return Err(BodyError::InvalidChunkSize),
                    }
                }
                ChunkState::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok(Step::NeedMore { consumed: pos });
                    }
                    let len = clamp(remaining, rest.len());
                    let left = remaining - len as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Step::Data { skip: pos, len });
                }
                ChunkState::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        self.state = ChunkState::Size;
                    }
                    [] | [b'\r'] => return Ok(Step::NeedMore { consumed: pos }),
                    _ => return Err(BodyError::MissingChunkTerminator),
                },
                ChunkState::Trailer => {
                    let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if self.trailer_bytes + rest.len() > MAX_TRAILERS {
                            return Err(BodyError::TrailersTooLong {
                                limit: MAX_TRAILERS,
                            });
                        }
                        return Ok(Step::NeedMore { consumed: pos });
                    };
                    pos += eol + 2;
                    self.trailer_bytes += eol + 2;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(BodyError::TrailersTooLong {
                            limit: MAX_TRAILERS,
                        });
                    }
                    if eol == 0 {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(Step::Done { consumed: pos }),
            }
        }
    }
}

/// Reads one body of a known framing from buffered input.
#[derive(Debug, Clone)]
pub enum BodyReader {
    /// `remaining` bytes still to come.
    Length {
        /// Bytes still expected.
        remaining: u64,
    },
    /// A chunked body.
    Chunked(ChunkedDecoder),
    /// Everything until the peer closes.
    UntilClose,
    /// The body has ended.
    Done,
}

impl BodyReader {
    /// A reader for a body with this framing.
    #[must_use]
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Self::Done,
            Framing::Length(n) => Self::Length { remaining: n },
            Framing::Chunked => Self::Chunked(ChunkedDecoder::new()),
            Framing::UntilClose => Self::UntilClose,
        }
    }

    /// The body has been read completely.
    #[must_use]
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }

    /// The body runs until the peer closes (EOF is its end, not an error).
    #[must_use]
    pub fn ends_at_close(&self) -> bool {
        matches!(self, Self::UntilClose)
    }

    /// Marks a close-delimited body as complete (the peer closed).
    pub fn finish_at_close(&mut self) {
        if self.ends_at_close() {
            *self = Self::Done;
        }
    }

    /// The next piece of the body within `input`.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, BodyError> {
        match self {
            Self::Done => Ok(Step::Done { consumed: 0 }),
            Self::Length { remaining } => {
                if input.is_empty() {
                    return Ok(Step::NeedMore { consumed: 0 });
                }
                let len = clamp(*remaining, input.len());
                *remaining -= len as u64;
                if *remaining == 0 {
                    *self = Self::Done;
                }
                Ok(Step::Data { skip: 0, len })
            }
            Self::Chunked(d) => {
                let step = d.step(input)?;
                if let Step::Done { .. } = step {
                    *self = Self::Done;
                }
                Ok(step)
            }
            Self::UntilClose if input.is_empty() => Ok(Step::NeedMore { consumed: 0 }),
            Self::UntilClose => Ok(Step::Data {
                skip: 0,
                len: input.len(),
            }),
        }
    }
}

/// Frames body data for the receiving side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyWriter {
    /// Data as is (Content-Length or close-delimited bodies).
    Identity,
    /// Each piece as one chunk, then the last chunk.
    Chunked,
}

impl BodyWriter {
    /// The writer for a body the receiver expects with this framing.
    #[must_use]
    pub fn for_framing(framing: Framing) -> Self {
        match framing {
            Framing::Chunked => Self::Chunked,
            _ => Self::Identity,
        }
    }

    /// Appends `data` (non-empty) framed to `out`.
    pub fn data(self, out: &mut Vec<u8>, data: &[u8]) {
        if self == Self::Chunked {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{:x}\r\n", data.len());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(data);
        }
    }

    /// Appends the end of the body to `out`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self == Self::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` to a reader in the given piece sizes, as a connection
    /// would deliver it, and collects the data. Returns (data, bytes consumed).
    fn feed(
        reader: &mut BodyReader,
        input: &[u8],
        cuts: &[usize],
    ) -> Result<(Vec<u8>, usize), BodyError> {
        let mut data = Vec::new();
        let mut start = 0; // consumed
        let mut end = 0; // delivered
        let mut cuts = cuts.iter().copied().cycle();
        loop {
            match reader.step(&input[start..end])? {
                Step::Data { skip, len } => {
                    data.extend_from_slice(&input[start + skip..start + skip + len]);
                    start += skip + len;
                }
                Step::NeedMore { consumed } => {
                    start += consumed;
                    if end == input.len() {
                        return Ok((data, start));
                    }
                    end = (end + cuts.next().unwrap_or(1).max(1)).min(input.len());
                }
                Step::Done { consumed } => return Ok((data, start + consumed)),
            }
        }
    }

    fn encode(chunks: &[Vec<u8>], ext: bool, trailers: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(format!("{:X}", c.len()).as_bytes());
            if ext {
                out.extend_from_slice(b";name=\"v\"");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        if trailers {
            out.extend_from_slice(b"X-Sum: 1\r\nX-B: 2\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn decodes_a_simple_body_and_stops_at_its_end() {
        let mut input = b"4\r\nRust\r\n5;x=y\r\n rock\r\n0\r\n\r\n".to_vec();
        let body_len = input.len();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut r = BodyReader::new(Framing::Chunked);
        let (data, used) = feed(&mut r, &input, &[3]).unwrap();
        assert_eq!(data, b"Rust rock");
        assert_eq!(used, body_len);
        assert!(r.is_done());
    }

    #[test]
    fn rejects_bad_chunks() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"4\r\nRustXX",
            b"-1\r\n",
            b"4\nRust\r\n",
        ] {
            let mut r = BodyReader::new(Framing::Chunked);
            assert!(
                feed(&mut r, bad, &[100]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"1;".to_vec();
        long.resize(MAX_CHUNK_LINE + 10, b'a');
        let mut r = BodyReader::new(Framing::Chunked);
        assert_eq!(
            feed(&mut r, &long, &[100_000]).unwrap_err(),
            BodyError::ChunkLineTooLong {
                limit: MAX_CHUNK_LINE
            }
        );
    }

    #[test]
    fn length_reader_stops_at_length() {
        let mut r = BodyReader::new(Framing::Length(5));
        let (data, used) = feed(&mut r, b"helloGET", &[2]).unwrap();
        assert_eq!((data.as_slice(), used), (&b"hello"[..], 5));
        assert!(r.is_done());
    }

    #[test]
    fn writer_frames_chunks() {
        let mut out = Vec::new();
        BodyWriter::Chunked.data(&mut out, &[b'a'; 26]);
        BodyWriter::Chunked.finish(&mut out);
        assert_eq!(
            out,
            [&b"1a\r\n"[..], &[b'a'; 26], b"\r\n0\r\n\r\n"].concat()
        );
    }

    proptest! {
        /// Any body, split anywhere, decodes to the same bytes, and re-encoding
        /// with BodyWriter then decoding again is the identity.
        #[test]
        fn chunked_roundtrip_any_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(1usize..64, 1..8),
            ext in any::<bool>(),
            trailers in any::<bool>(),
        ) {
            let expected: Vec<u8> = chunks.concat();
            let input = encode(&chunks, ext, trailers);
            let mut r = BodyReader::new(Framing::Chunked);
            let (data, used) = feed(&mut r, &input, &cuts).unwrap();
            prop_assert_eq!(&data, &expected);
            prop_assert_eq!(used, input.len());
            prop_assert!(r.is_done());

            let mut again = Vec::new();
            for c in chunks.iter().filter(|c| !c.is_empty()) {
                BodyWriter::Chunked.data(&mut again, c);
            }
            BodyWriter::Chunked.finish(&mut again);
            let mut r = BodyReader::new(Framing::Chunked);
            let (data2, _) = feed(&mut r, &again, &cuts).unwrap();
            prop_assert_eq!(data2, expected);
        }

        /// A truncated chunked body never reports Done.
        #[test]
        fn truncated_chunked_never_done(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 1..5),
            cut in 0usize..1000,
        ) {
            let input = encode(&chunks, false, false);
            let cut = cut % input.len();
            let mut r = BodyReader::new(Framing::Chunked);
            let _ = feed(&mut r, &input[..cut], &[7]).unwrap();
            prop_assert!(!r.is_done());
        }
    }
}
