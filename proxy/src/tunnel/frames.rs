//! Where WebSocket frames begin and end in a relayed byte stream (RFC 6455 §5.2).
//!
//! The relay moves bytes, not frames. To end a WebSocket itself (the proxy stopping, the
//! idle timeout) with a Close frame rather than a bare TCP close, which a browser reports
//! as an abnormal closure (1006), it must write that frame between two frames of the
//! stream, never inside one. A [`Cursor`] follows the frame headers as bytes pass, without
//! copying payloads, and says when the stream is at a boundary, and whether a Close frame
//! has already gone through (after which nothing more may be sent on that side).

/// The longest frame header: 2 bytes, an 8-byte extended length and a 4-byte mask key.
const MAX_HEADER: usize = 14;

/// The close code for "going away" (RFC 6455 §7.4.1).
pub const GOING_AWAY: u16 = 1001;

/// Position in one direction's frame stream.
#[derive(Debug, Default, Clone)]
pub struct Cursor {
    /// The header being read, while `have > 0`.
    header: [u8; MAX_HEADER],
    have: u8,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    /// A Close frame has begun in this direction.
    saw_close: bool,
}

impl Cursor {
    /// Follows `bytes`, the next bytes of the stream.
    pub fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = self.step(bytes);
            bytes = &bytes[n..];
        }
    }

    /// Follows `bytes` up to the end of the first frame that ends in them, and says how many
    /// bytes that is: all of them when no frame ends in them. For the proxy's own Close,
    /// which must go in at the first boundary of a stream that may never pause at one.
    pub fn advance_to_frame_end(&mut self, bytes: &[u8]) -> usize {
        let mut used = 0;
        while used < bytes.len() {
            used += self.step(&bytes[used..]);
            if self.at_boundary() {
                break;
            }
        }
        used
    }

    /// Follows the next bytes of the current header or payload (at least one byte of a
    /// non-empty `bytes`); how many it took.
    fn step(&mut self, bytes: &[u8]) -> usize {
        let Some(&first) = bytes.first() else {
            return 0;
        };
        if self.payload_left > 0 {
            let n = usize::try_from(self.payload_left)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            self.payload_left -= n as u64;
            return n;
        }
        let have = usize::from(self.have);
        self.header[have] = first;
        self.have += 1;
        if have == 0 && first & 0x0f == 0x8 {
            self.saw_close = true;
        }
        if let Some(payload) = complete(&self.header[..usize::from(self.have)]) {
            self.have = 0;
            self.payload_left = payload;
        }
        1
    }

    /// Between two frames: what has passed ends a frame.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// A Close frame went through: no frame may follow it on this side.
    pub fn closed(&self) -> bool {
        self.saw_close
    }
}

/// The payload length once `header` is a whole frame header, `None` while it is not yet.
fn complete(header: &[u8]) -> Option<u64> {
    let [_, second, rest @ ..] = header else {
        return None;
    };
    let masked = second & 0x80 != 0;
    let mask = if masked { 4 } else { 0 };
    let (len, ext) = match second & 0x7f {
        126 => (None, 2),
        127 => (None, 8),
        n => (Some(u64::from(n)), 0),
    };
    if rest.len() < ext + mask {
        return None;
    }
    Some(len.unwrap_or_else(|| {
        rest[..ext]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    }))
}

/// A Close frame with `code` and `reason`, masked with `mask` when it goes to a server
/// (RFC 6455 §5.3: a client's frames are masked, a server's are not).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    // Control frames carry at most 125 payload bytes.
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x88);
    // At most 125: fits the 7-bit length.
    let len = payload.len() as u8;
    match mask {
        Some(key) => {
            frame.push(0x80 | len);
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => {
            frame.push(len);
            frame.extend_from_slice(&payload);
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0x55, len));
        f
    }

    #[test]
    fn follows_frames_of_every_length_form_split_anywhere() {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for (len, masked) in [
            (0, false),
            (5, true),
            (125, false),
            (126, true),
            (70_000, false),
        ] {
            stream.extend(frame(0x2, len, masked));
            ends.push(stream.len());
        }
        for chunk in [1, 2, 3, 7, 13, 4096, stream.len()] {
            let mut c = Cursor::default();
            let mut at = 0;
            for piece in stream.chunks(chunk) {
                c.advance(piece);
                at += piece.len();
                assert_eq!(
                    c.at_boundary(),
                    ends.contains(&at),
                    "chunk {chunk}, at {at}"
                );
            }
            assert!(!c.closed());
        }
    }

    #[test]
    fn notices_a_close_frame() {
        let mut c = Cursor::default();
        c.advance(&frame(0x1, 3, true));
        assert!(!c.closed());
        c.advance(&close_frame(1000, "bye", Some([9, 8, 7, 6]))[..3]);
        assert!(c.closed());
        assert!(!c.at_boundary());
    }

    /// A header with the 64-bit length form and `len`, masked or not.
    fn long_header(len: u64, masked: bool) -> Vec<u8> {
        let mut h = vec![0x82, if masked { 0xff } else { 0x7f }];
        h.extend_from_slice(&len.to_be_bytes());
        if masked {
            h.extend_from_slice(&[1, 2, 3, 4]);
        }
        h
    }

    /// Lengths RFC 6455 forbids (the high bit of the 64-bit form set) or that no stream
    /// will ever carry are followed as given: no overflow, no panic, never a boundary
    /// until that many bytes have passed.
    #[test]
    fn huge_and_invalid_lengths_are_followed_without_overflow() {
        for len in [u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) + 5] {
            for masked in [false, true] {
                let mut c = Cursor::default();
                c.advance(&long_header(len, masked));
                assert!(!c.at_boundary());
                c.advance(&[0u8; 70_000]);
                assert!(!c.at_boundary());
                assert_eq!(c.advance_to_frame_end(&[0u8; 9]), 9);
                assert_eq!(c.payload_left, len - 70_009);
            }
        }
        // The largest length, all but its last byte passed, then the rest: a boundary.
        let mut c = Cursor {
            payload_left: 3,
            ..Cursor::default()
        };
        assert_eq!(c.advance_to_frame_end(&[0, 0, 0, 0x81, 0]), 3);
        assert!(c.at_boundary());
    }

    /// RSV bits (an extension such as permessage-deflate), a server's masked frames, a
    /// client's unmasked ones, control frames inside a fragmented message and empty frames
    /// are all just frames: the cursor finds their ends, and only a Close opcode counts as
    /// a Close (a compressed frame's RSV1 does not make a text frame one).
    #[test]
    fn any_opcode_rsv_and_mask_is_a_frame() {
        let stream: Vec<Vec<u8>> = vec![
            frame(0x01, 3, false), // first fragment of a text message, unmasked
            frame(0x89, 0, true),  // a ping in the middle of it, masked
            frame(0x8a, 4, false), // a pong
            frame(0x00, 0, false), // an empty continuation
            frame(0xc1, 9, true),  // RSV1 (compressed), FIN, text
            frame(0xf2, 2, false), // every RSV bit
            frame(0x80, 0, false), // the final, empty continuation
        ];
        let all: Vec<u8> = stream.concat();
        let mut c = Cursor::default();
        let mut at = 0;
        for f in &stream {
            assert_eq!(c.advance_to_frame_end(&all[at..]), f.len());
            at += f.len();
            assert!(c.at_boundary());
        }
        assert!(!c.closed());
        // Many tiny frames in one read.
        let tiny: Vec<u8> = (0..1000).flat_map(|_| frame(0x82, 1, false)).collect();
        let mut c = Cursor::default();
        c.advance(&tiny);
        assert!(c.at_boundary());
        assert_eq!(c.advance_to_frame_end(&tiny), 3);
    }

    proptest::proptest! {
        /// Any stream of frames, cut into reads anywhere: the cursor is at a boundary after
        /// a read exactly when the read ends a frame, and `advance_to_frame_end` stops at
        /// each frame's end.
        #[test]
        fn boundaries_are_found_wherever_the_reads_are_cut(
            frames in proptest::collection::vec(
                (0u8..=255, 0usize..300, proptest::bool::ANY), 1..20),
            cuts in proptest::collection::vec(1usize..400, 1..50),
        ) {
            let mut stream = Vec::new();
            let mut ends = vec![0];
            for &(first, len, masked) in &frames {
                // Any FIN and RSV bits, a binary opcode (never a Close).
                let mut f = frame(0x2, len, masked);
                f[0] = first & 0xf0 | 0x2;
                stream.extend(f);
                ends.push(stream.len());
            }
            // advance(): boundary after each read exactly when a frame ended there.
            let mut c = Cursor::default();
            let (mut at, mut i) = (0, 0);
            while at < stream.len() {
                let n = cuts[i % cuts.len()].min(stream.len() - at);
                c.advance(&stream[at..at + n]);
                at += n;
                i += 1;
                proptest::prop_assert_eq!(c.at_boundary(), ends.contains(&at));
            }
            // advance_to_frame_end(): from each boundary, one frame per call.
            let mut c = Cursor::default();
            let mut at = 0;
            for w in ends.windows(2) {
                let mut got = 0;
                while !c.at_boundary() || got == 0 {
                    let n = cuts[(at + got) % cuts.len()].min(stream.len() - at - got);
                    got += c.advance_to_frame_end(&stream[at + got..at + got + n]);
                }
                proptest::prop_assert_eq!(at + got, w[1]);
                at += got;
            }
        }

        /// Arbitrary bytes never make the cursor panic.
        #[test]
        fn any_bytes_are_followed(bytes in proptest::collection::vec(0u8..=255, 0..2000),
                                  cut in 1usize..64) {
            let mut c = Cursor::default();
            for piece in bytes.chunks(cut) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let n = c.advance_to_frame_end(rest);
                    proptest::prop_assert!(n >= 1 && n <= rest.len());
                    rest = &rest[n..];
                }
            }
        }
    }

    #[test]
    fn close_frames_carry_the_code_and_reason_masked_only_toward_a_server() {
        let plain = close_frame(GOING_AWAY, "stopping", None);
        assert_eq!(&plain[..4], &[0x88, 10, 0x03, 0xe9]);
        assert_eq!(&plain[4..], b"stopping");
        let key = [0x11, 0x22, 0x33, 0x44];
        let masked = close_frame(GOING_AWAY, "stopping", Some(key));
        assert_eq!(&masked[..2], &[0x88, 0x80 | 10]);
        assert_eq!(&masked[2..6], &key);
        let unmasked: Vec<u8> = masked[6..]
            .iter()
            .zip(key.iter().cycle())
            .map(|(b, k)| b ^ k)
            .collect();
        assert_eq!(unmasked, plain[2..]);
        let mut c = Cursor::default();
        c.advance(&masked);
        assert!(c.at_boundary() && c.closed());
        // A reason too long for a control frame is cut to fit its 125 bytes.
        assert_eq!(close_frame(1000, &"x".repeat(300), None).len(), 2 + 125);
    }
}
