//! The wire format between nodes, sans-IO: length-delimited frames.
//!
//! A frame is a big-endian `u32` body length, then the body: one kind byte
//! (request, response, error response, response chunk), a big-endian `u64`
//! request id, and the payload. A streamed answer is any number of chunks
//! followed by a response or an error response. Bodies above [`FRAME_SIZE_BYTES_MAX`] are refused on both
//! sides: the sender never writes one and a reader that sees such a length
//! closes the connection (it cannot skip what it will not buffer).

/// Largest frame body: an actor's whole state plus room for the envelope.
pub const FRAME_SIZE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The length prefix.
pub const FRAME_HEADER_SIZE_BYTES: usize = 4;

/// Kind byte and request id in front of every payload.
pub const ENVELOPE_SIZE_BYTES: usize = 1 + 8;

const _: () =
    assert!(FRAME_SIZE_BYTES_MAX <= u32::MAX as usize && ENVELOPE_SIZE_BYTES < FRAME_SIZE_BYTES_MAX);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Request = 0,
    Response = 1,
    /// The handler failed; the payload is its UTF-8 reason.
    ErrorResponse = 2,
    /// Part of a streamed answer; a `Response` (the last part) or an
    /// `ErrorResponse` with the same request id ends the stream.
    ResponseChunk = 3,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub kind: FrameKind,
    pub request_id: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame body of {size_bytes} bytes exceeds FRAME_SIZE_BYTES_MAX ({FRAME_SIZE_BYTES_MAX})")]
    TooLarge { size_bytes: u64 },
    #[error("frame body of {size_bytes} bytes is shorter than its {ENVELOPE_SIZE_BYTES}-byte envelope")]
    TooShort { size_bytes: usize },
    #[error("unknown frame kind {kind}")]
    UnknownKind { kind: u8 },
}

/// Header and body of `envelope`, ready to write.
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, FrameError> {
    let body_bytes = ENVELOPE_SIZE_BYTES + envelope.payload.len();
    if body_bytes > FRAME_SIZE_BYTES_MAX {
        return Err(FrameError::TooLarge { size_bytes: body_bytes as u64 });
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER_SIZE_BYTES + body_bytes);
    frame.extend_from_slice(&(body_bytes as u32).to_be_bytes());
    frame.push(envelope.kind as u8);
    frame.extend_from_slice(&envelope.request_id.to_be_bytes());
    frame.extend_from_slice(&envelope.payload);
    assert_eq!(frame.len(), FRAME_HEADER_SIZE_BYTES + body_bytes);
    Ok(frame)
}

/// The body length a header announces, refused above the maximum.
pub fn body_size(header: [u8; FRAME_HEADER_SIZE_BYTES]) -> Result<usize, FrameError> {
    let size_bytes = u32::from_be_bytes(header) as usize;
    if size_bytes > FRAME_SIZE_BYTES_MAX {
        return Err(FrameError::TooLarge { size_bytes: size_bytes as u64 });
    }
    if size_bytes < ENVELOPE_SIZE_BYTES {
        return Err(FrameError::TooShort { size_bytes });
    }
    Ok(size_bytes)
}

/// Parses a body whose length [`body_size`] accepted.
pub fn decode(body: Vec<u8>) -> Result<Envelope, FrameError> {
    if body.len() < ENVELOPE_SIZE_BYTES {
        return Err(FrameError::TooShort { size_bytes: body.len() });
    }
    assert!(body.len() <= FRAME_SIZE_BYTES_MAX, "caller read an unchecked length");
    let kind = match body[0] {
        0 => FrameKind::Request,
        1 => FrameKind::Response,
        2 => FrameKind::ErrorResponse,
        3 => FrameKind::ResponseChunk,
        kind => return Err(FrameError::UnknownKind { kind }),
    };
    let mut id = [0u8; 8];
    id.copy_from_slice(&body[1..ENVELOPE_SIZE_BYTES]);
    Ok(Envelope { kind, request_id: u64::from_be_bytes(id), payload: body[ENVELOPE_SIZE_BYTES..].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_header_and_body() {
        let envelope = Envelope {
            kind: FrameKind::Response,
            request_id: 0x0102_0304_0506_0708,
            payload: b"hi".to_vec(),
        };
        let frame = encode(&envelope).unwrap();
        assert_eq!(&frame[..4], &[0, 0, 0, 11]);
        let size = body_size(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(size, 11);
        assert_eq!(decode(frame[4..].to_vec()).unwrap(), envelope);
    }

    #[test]
    fn oversize_lengths_are_refused_on_both_sides() {
        let payload = vec![0u8; FRAME_SIZE_BYTES_MAX - ENVELOPE_SIZE_BYTES + 1];
        let envelope = Envelope { kind: FrameKind::Request, request_id: 1, payload };
        let too_large = FrameError::TooLarge { size_bytes: FRAME_SIZE_BYTES_MAX as u64 + 1 };
        assert_eq!(encode(&envelope), Err(too_large.clone()));
        assert_eq!(body_size((FRAME_SIZE_BYTES_MAX as u32 + 1).to_be_bytes()), Err(too_large));
        assert_eq!(body_size((FRAME_SIZE_BYTES_MAX as u32).to_be_bytes()), Ok(FRAME_SIZE_BYTES_MAX));
    }

    #[test]
    fn short_bodies_and_unknown_kinds_are_errors() {
        assert_eq!(body_size(3u32.to_be_bytes()), Err(FrameError::TooShort { size_bytes: 3 }));
        let mut body = vec![7u8];
        body.extend_from_slice(&1u64.to_be_bytes());
        assert_eq!(decode(body), Err(FrameError::UnknownKind { kind: 7 }));
    }
}
