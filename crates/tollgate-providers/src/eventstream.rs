//! The `application/vnd.amazon.eventstream` binary framing (Bedrock ConverseStream).
//!
//! A message is:
//! ```text
//! [total length u32][headers length u32][prelude CRC32 u32]   12-byte prelude, big-endian
//! [headers]                                                  name-len u8, name, type u8, value
//! [payload]
//! [message CRC32 u32]                                        over everything before it
//! ```
//! Both CRCs are CRC-32 (IEEE, as zlib). Bedrock sends events with
//! `:message-type = event`, `:event-type = messageStart | contentBlockDelta | ...` and a
//! JSON payload; failures mid-stream come as `:message-type = exception` with
//! `:exception-type = throttlingException | ...`.
//!
//! [`FrameDecoder`] splits a byte stream into whole messages and never panics on bad
//! input: a bad length or CRC makes the stream malformed from that point on.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest message accepted (Bedrock's events are a few KiB; AWS caps messages at 16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
const PRELUDE: usize = 12;
const MIN_MESSAGE: usize = PRELUDE + 4;

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for b in data {
        c = CRC_TABLE[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// A header value. Only strings matter to Bedrock; the other types are decoded so a
/// message using them can still be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(Vec<u8>),
    String(String),
    Timestamp(i64),
    Uuid([u8; 16]),
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Bytes,
}

impl Message {
    /// A string header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(k, v)| match v {
            HeaderValue::String(s) if k == name => Some(s.as_str()),
            _ => None,
        })
    }

    /// `:message-type` (`event`, `exception`, `error`).
    pub fn message_type(&self) -> Option<&str> {
        self.header(":message-type")
    }

    /// An event message with a JSON payload.
    pub fn event(event_type: &str, payload: &[u8]) -> Message {
        Message {
            headers: vec![
                (":event-type".into(), HeaderValue::String(event_type.into())),
                (
                    ":content-type".into(),
                    HeaderValue::String("application/json".into()),
                ),
                (":message-type".into(), HeaderValue::String("event".into())),
            ],
            payload: Bytes::copy_from_slice(payload),
        }
    }

    /// An exception message (`exception_type` as Bedrock names it in streams, e.g.
    /// `throttlingException`) with a `{"message": ...}` payload.
    pub fn exception(exception_type: &str, message: &str) -> Message {
        let payload = serde_json::json!({ "message": message }).to_string();
        Message {
            headers: vec![
                (
                    ":exception-type".into(),
                    HeaderValue::String(exception_type.into()),
                ),
                (
                    ":content-type".into(),
                    HeaderValue::String("application/json".into()),
                ),
                (
                    ":message-type".into(),
                    HeaderValue::String("exception".into()),
                ),
            ],
            payload: Bytes::from(payload),
        }
    }

    /// Encode with both CRCs.
    pub fn encode(&self) -> Bytes {
        let mut headers = BytesMut::new();
        for (name, value) in &self.headers {
            let name = &name.as_bytes()[..name.len().min(255)];
            headers.put_u8(name.len() as u8);
            headers.put_slice(name);
            match value {
                HeaderValue::Bool(true) => headers.put_u8(0),
                HeaderValue::Bool(false) => headers.put_u8(1),
                HeaderValue::Byte(b) => {
                    headers.put_u8(2);
                    headers.put_i8(*b);
                }
                HeaderValue::Short(v) => {
                    headers.put_u8(3);
                    headers.put_i16(*v);
                }
                HeaderValue::Int(v) => {
                    headers.put_u8(4);
                    headers.put_i32(*v);
                }
                HeaderValue::Long(v) => {
                    headers.put_u8(5);
                    headers.put_i64(*v);
                }
                HeaderValue::Bytes(b) => {
                    let b = &b[..b.len().min(u16::MAX as usize)];
                    headers.put_u8(6);
                    headers.put_u16(b.len() as u16);
                    headers.put_slice(b);
                }
                HeaderValue::String(s) => {
                    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
                    headers.put_u8(7);
                    headers.put_u16(b.len() as u16);
                    headers.put_slice(b);
                }
                HeaderValue::Timestamp(v) => {
                    headers.put_u8(8);
                    headers.put_i64(*v);
                }
                HeaderValue::Uuid(u) => {
                    headers.put_u8(9);
                    headers.put_slice(u);
                }
            }
        }
        let total = MIN_MESSAGE + headers.len() + self.payload.len();
        let mut out = BytesMut::with_capacity(total);
        out.put_u32(total as u32);
        out.put_u32(headers.len() as u32);
        let prelude_crc = crc32(&out[..8]);
        out.put_u32(prelude_crc);
        out.put_slice(&headers);
        out.put_slice(&self.payload);
        let crc = crc32(&out);
        out.put_u32(crc);
        out.freeze()
    }
}

/// Why a byte stream is not a valid event stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("event stream: message length {0} is out of range")]
    Length(usize),
    #[error("event stream: prelude CRC mismatch")]
    PreludeCrc,
    #[error("event stream: message CRC mismatch")]
    MessageCrc,
    #[error("event stream: malformed headers")]
    Headers,
}

/// Decode one complete message (exactly `data.len()` bytes, CRCs included).
pub fn decode_message(data: &[u8]) -> Result<Message, FrameError> {
    if data.len() < MIN_MESSAGE {
        return Err(FrameError::Length(data.len()));
    }
    let mut p = &data[..PRELUDE];
    let total = p.get_u32() as usize;
    let headers_len = p.get_u32() as usize;
    let prelude_crc = p.get_u32();
    if total != data.len() || headers_len > total - MIN_MESSAGE {
        return Err(FrameError::Length(total));
    }
    if crc32(&data[..8]) != prelude_crc {
        return Err(FrameError::PreludeCrc);
    }
    let body_end = total - 4;
    let mut tail = &data[body_end..];
    if crc32(&data[..body_end]) != tail.get_u32() {
        return Err(FrameError::MessageCrc);
    }
    let headers = decode_headers(&data[PRELUDE..PRELUDE + headers_len])?;
    Ok(Message {
        headers,
        payload: Bytes::copy_from_slice(&data[PRELUDE + headers_len..body_end]),
    })
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], FrameError> {
    if buf.len() < n {
        return Err(FrameError::Headers);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn decode_headers(mut buf: &[u8]) -> Result<Vec<(String, HeaderValue)>, FrameError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let n = take(&mut buf, 1)?[0] as usize;
        let name = std::str::from_utf8(take(&mut buf, n)?)
            .map_err(|_| FrameError::Headers)?
            .to_string();
        let ty = take(&mut buf, 1)?[0];
        let fixed = |buf: &mut &[u8], n: usize| -> Result<Vec<u8>, FrameError> {
            Ok(take(buf, n)?.to_vec())
        };
        let value = match ty {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(take(&mut buf, 1)?[0] as i8),
            3 => HeaderValue::Short((&fixed(&mut buf, 2)?[..]).get_i16()),
            4 => HeaderValue::Int((&fixed(&mut buf, 4)?[..]).get_i32()),
            5 => HeaderValue::Long((&fixed(&mut buf, 8)?[..]).get_i64()),
            6 | 7 => {
                let len = (&fixed(&mut buf, 2)?[..]).get_u16() as usize;
                let v = take(&mut buf, len)?;
                if ty == 6 {
                    HeaderValue::Bytes(v.to_vec())
                } else {
                    HeaderValue::String(
                        std::str::from_utf8(v)
                            .map_err(|_| FrameError::Headers)?
                            .to_string(),
                    )
                }
            }
            8 => HeaderValue::Timestamp((&fixed(&mut buf, 8)?[..]).get_i64()),
            9 => {
                let mut u = [0u8; 16];
                u.copy_from_slice(take(&mut buf, 16)?);
                HeaderValue::Uuid(u)
            }
            _ => return Err(FrameError::Headers),
        };
        out.push((name, value));
    }
    Ok(out)
}

/// Splits a byte stream into whole messages. Feed chunks as they come; each call
/// returns the complete messages (with their raw bytes, for pass-through).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    pending: BytesMut,
    /// Set once the stream is malformed; nothing more is decoded.
    pub error: Option<FrameError>,
}

impl FrameDecoder {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<(Bytes, Message)> {
        let mut out = Vec::new();
        if self.error.is_some() {
            return out;
        }
        self.pending.extend_from_slice(chunk);
        loop {
            if self.pending.len() < PRELUDE {
                break;
            }
            let total = u32::from_be_bytes([
                self.pending[0],
                self.pending[1],
                self.pending[2],
                self.pending[3],
            ]) as usize;
            if !(MIN_MESSAGE..=MAX_MESSAGE_BYTES).contains(&total) {
                self.error = Some(FrameError::Length(total));
                break;
            }
            // Check the prelude before waiting for a (possibly bogus) long body.
            let prelude_crc = u32::from_be_bytes([
                self.pending[8],
                self.pending[9],
                self.pending[10],
                self.pending[11],
            ]);
            if crc32(&self.pending[..8]) != prelude_crc {
                self.error = Some(FrameError::PreludeCrc);
                break;
            }
            if self.pending.len() < total {
                break;
            }
            let raw = self.pending.split_to(total).freeze();
            match decode_message(&raw) {
                Ok(m) => out.push((raw, m)),
                Err(e) => {
                    self.error = Some(e);
                    break;
                }
            }
        }
        out
    }

    /// Bytes of an incomplete message still buffered.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn round_trips_every_header_type() {
        let m = Message {
            headers: vec![
                ("t".into(), HeaderValue::Bool(true)),
                ("f".into(), HeaderValue::Bool(false)),
                ("b".into(), HeaderValue::Byte(-3)),
                ("s".into(), HeaderValue::Short(-300)),
                ("i".into(), HeaderValue::Int(70_000)),
                ("l".into(), HeaderValue::Long(-5_000_000_000)),
                ("y".into(), HeaderValue::Bytes(vec![1, 2, 3])),
                ("str".into(), HeaderValue::String("héllo".into())),
                ("ts".into(), HeaderValue::Timestamp(1_700_000_000_000)),
                ("u".into(), HeaderValue::Uuid([7; 16])),
            ],
            payload: Bytes::from_static(b"{\"a\":1}"),
        };
        let raw = m.encode();
        assert_eq!(decode_message(&raw).unwrap(), m);
    }

    #[test]
    fn split_anywhere_and_detect_corruption() {
        let a = Message::event("messageStart", br#"{"role":"assistant"}"#).encode();
        let b = Message::exception("throttlingException", "slow down").encode();
        let all = [a.clone(), b.clone()].concat();
        for cut in 0..all.len() {
            let mut d = FrameDecoder::default();
            let mut got = d.feed(&all[..cut]);
            got.extend(d.feed(&all[cut..]));
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[0].0, a);
            assert_eq!(got[1].1.message_type(), Some("exception"));
            assert_eq!(
                got[1].1.header(":exception-type"),
                Some("throttlingException")
            );
        }
        let mut bad = a.to_vec();
        let n = bad.len();
        bad[n - 6] ^= 1;
        let mut d = FrameDecoder::default();
        assert!(d.feed(&bad).is_empty());
        assert_eq!(d.error, Some(FrameError::MessageCrc));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048), cut in 0usize..2048) {
            let mut d = FrameDecoder::default();
            let cut = cut.min(data.len());
            let _ = d.feed(&data[..cut]);
            let _ = d.feed(&data[cut..]);
            let _ = decode_message(&data);
        }

        #[test]
        fn valid_frames_with_flipped_bits_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..200), flip in 0usize..400) {
            let raw = Message::event("contentBlockDelta", &payload).encode().to_vec();
            let mut raw = raw;
            let i = flip % raw.len();
            raw[i] ^= 0x40;
            let mut d = FrameDecoder::default();
            let got = d.feed(&raw);
            // A flipped bit is caught by a CRC (or a length check), never decoded silently.
            prop_assert!(got.is_empty());
        }
    }
}
