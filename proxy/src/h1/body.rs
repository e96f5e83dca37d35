//! Where a response body ends. Bodies are relayed as they come, never re-encoded; this only
//! follows the framing far enough to know when the message is over, so that both
//! connections can carry the next one.

/// How a response body is delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, or Content-Length: 0).
    Empty,
    /// Content-Length: this many bytes remain.
    Length(u64),
    /// Transfer-Encoding: chunked, followed chunk by chunk.
    Chunked(Chunked),
    /// Neither: the body runs until the backend closes, and so does the client connection.
    UntilClose,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed chunked body from the backend")]
pub struct BadChunk;

impl Framing {
    /// Takes the next `bytes` of the body: how many of them belong to it, and whether the
    /// body is complete with them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), BadChunk> {
        self.feed_with(bytes, |_| {})
    }

    /// [`Framing::feed`] that also hands `data` the body's content in those bytes, without
    /// the chunked framing (for a reader of the body, such as a health check's
    /// `expect_body`; the relay passes a closure that does nothing).
    #[inline]
    pub fn feed_with(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<(usize, bool), BadChunk> {
        match self {
            Framing::Empty => Ok((0, true)),
            Framing::Length(left) => {
                let take = (*left).min(bytes.len() as u64);
                *left -= take;
                data(&bytes[..take as usize]);
                Ok((take as usize, *left == 0))
            }
            Framing::Chunked(c) => c.feed_with(bytes, data),
            Framing::UntilClose => {
                data(bytes);
                Ok((bytes.len(), false))
            }
        }
    }

    /// Whether the end of the connection is what ends the body.
    pub fn until_close(&self) -> bool {
        matches!(self, Framing::UntilClose)
    }
}

/// Chunk-size line limit: a size of 16 hex digits plus room for extensions.
const MAX_LINE: usize = 4096;

/// State of a chunked body scan (RFC 9112 §7.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunked {
    state: State,
    size: u64,
    /// Bytes seen on the current size or trailer line.
    line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Hex digits of a chunk size.
    #[default]
    Size,
    /// Whitespace after the size (RFC 9112 §7.1.1's BWS): only more of it, a `;` or the
    /// line's end may follow.
    SizeWs,
    /// Chunk extensions, up to the end of the size line.
    SizeRest,
    /// The `\n` that ends the size line.
    SizeLf,
    /// Chunk data, `size` bytes left.
    Data,
    DataCr,
    DataLf,
    /// The start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    /// The `\n` that ends a trailer line.
    TrailerLf,
    /// The `\n` of the final empty line.
    EndLf,
    Done,
}

impl Chunked {
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), BadChunk> {
        self.feed_with(bytes, |_| {})
    }

    /// [`Chunked::feed`] that hands `data` each run of chunk data it passes over.
    #[inline]
    pub fn feed_with(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<(usize, bool), BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            if self.state == State::Data {
                let take = self.size.min((bytes.len() - i) as u64) as usize;
                data(&bytes[i..i + take]);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match self.state {
                State::Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        self.line += 1;
                        if self.line > 16 {
                            return Err(BadChunk);
                        }
                        self.size = (self.size << 4) | u64::from(d);
                        State::Size
                    }
                    None if self.line == 0 => return Err(BadChunk),
                    None if b == b'\r' => State::SizeLf,
                    None if b == b';' => State::SizeRest,
                    None if b == b' ' || b == b'\t' => State::SizeWs,
                    None => return Err(BadChunk),
                },
                // `5 5` would be a size of 5 to us and maybe 0x55 to a lenient client.
                State::SizeWs => match b {
                    b' ' | b'\t' => {
                        self.line += 1;
                        if self.line > MAX_LINE {
                            return Err(BadChunk);
                        }
                        State::SizeWs
                    }
                    b';' => State::SizeRest,
                    b'\r' => State::SizeLf,
                    _ => return Err(BadChunk),
                },
                State::SizeRest => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(BadChunk);
                    }
                    if b == b'\r' {
                        State::SizeLf
                    } else if is_ctl(b) {
                        // A bare LF (or other control byte) has no place in chunk extensions
                        // (RFC 9112 §7.1.1). Passed on, it would end the size line for a
                        // client that takes a bare LF as a line end, which would then frame
                        // the body apart from us.
                        return Err(BadChunk);
                    } else {
                        State::SizeRest
                    }
                }
                State::SizeLf if b == b'\n' => {
                    self.line = 0;
                    if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    }
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size,
                State::TrailerStart if b == b'\r' => State::EndLf,
                State::TrailerStart | State::TrailerLine => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(BadChunk);
                    }
                    if b == b'\r' {
                        State::TrailerLf
                    } else if is_ctl(b) {
                        // Trailer lines are field lines ending in CRLF (RFC 9112 §7.1.2): a
                        // bare LF or CR would end the trailer section elsewhere for a
                        // lenient client than for us.
                        return Err(BadChunk);
                    } else {
                        State::TrailerLine
                    }
                }
                State::TrailerLf if b == b'\n' => {
                    self.line = 0;
                    State::TrailerStart
                }
                State::EndLf if b == b'\n' => {
                    self.state = State::Done;
                    return Ok((i, true));
                }
                _ => return Err(BadChunk),
            };
        }
        Ok((i, self.state == State::Done))
    }
}

/// A control byte other than HTAB, which is allowed in field values and extensions.
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> Result<(usize, bool), BadChunk> {
        let mut c = Chunked::default();
        let mut total = 0;
        for p in parts {
            let (n, done) = c.feed(p)?;
            total += n;
            if done {
                return Ok((total, true));
            }
        }
        Ok((total, false))
    }

    #[test]
    fn hands_out_the_data_without_the_framing_across_any_split() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for cut in 0..body.len() {
            let mut c = Framing::Chunked(Chunked::default());
            let mut data = Vec::new();
            let (a, b) = body.split_at(cut);
            for part in [a, b] {
                match c.feed_with(part, |d| data.extend_from_slice(d)) {
                    Ok((_, true)) => break,
                    Ok((_, false)) => {}
                    Err(e) => panic!("split at {cut}: {e}"),
                }
            }
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "split at {cut}");
        }
        let mut data = Vec::new();
        let mut length = Framing::Length(3);
        assert_eq!(
            length.feed_with(b"abcdef", |d| data.extend_from_slice(d)),
            Ok((3, true))
        );
        assert_eq!(data, b"abc");
    }

    #[test]
    fn finds_the_end_across_any_split() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for cut in 0..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(scan(&[a, b]), Ok((end, true)), "split at {cut}");
        }
        // Byte by byte: done exactly at the end, never early.
        let mut c = Chunked::default();
        let done_at = body
            .iter()
            .position(|b| c.feed(std::slice::from_ref(b)) == Ok((1, true)));
        assert_eq!(done_at, Some(end - 1));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(scan(&[b"zz\r\n"]), Err(BadChunk));
        assert_eq!(scan(&[b"5\r\nhelloXX"]), Err(BadChunk));
        assert_eq!(scan(&[b"\r\n"]), Err(BadChunk));
        assert_eq!(scan(&[b"11111111111111111\r\n"]), Err(BadChunk));
        // Bare LFs and other control bytes where a lenient parser would see a line end.
        for bad in [
            &b"3;x\nabc\r\n0\r\n\r\n"[..],
            b"3;x\0\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nx: y\n\r\n",
            b"3\r\nabc\r\n0\r\nx: y\rz\r\n\r\n",
            b"3\r\nabc\r\n0\r\n\n",
            b"3\nabc\r\n0\r\n\r\n",
            // Anything but `;` or the line's end after whitespace: `5 5` may be 0x55.
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"3 x\r\nabc\r\n0\r\n\r\n",
        ] {
            assert_eq!(scan(&[bad]), Err(BadChunk), "{}", bad.escape_ascii());
        }
        // Whitespace and extensions with tabs stay fine.
        for good in [
            &b"3 ;a=\"b\tc\"\r\nabc\r\n0\r\nx-a: 1\t2\r\n\r\n"[..],
            b"3 \t \r\nabc\r\n0\r\n\r\n",
        ] {
            assert_eq!(
                scan(&[good]),
                Ok((good.len(), true)),
                "{}",
                good.escape_ascii()
            );
        }
    }

    #[test]
    fn length_and_empty() {
        let mut f = Framing::Length(5);
        assert_eq!(f.feed(b"abc"), Ok((3, false)));
        assert_eq!(f.feed(b"defgh"), Ok((2, true)));
        assert_eq!(Framing::Empty.feed(b"x"), Ok((0, true)));
        assert_eq!(Framing::UntilClose.feed(b"xy"), Ok((2, false)));
    }
}
