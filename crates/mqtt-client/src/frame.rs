//! MQTT framing: split complete packets off a byte buffer (MQTT 5 §2.1.4).

use bytes::{Bytes, BytesMut};

/// Why a frame could not be taken from the buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The Remaining Length is longer than 4 bytes (MQTT 5 §1.5.5).
    #[error("remaining length longer than 4 bytes")]
    MalformedLength,
    /// The packet is larger than the client accepts.
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

/// Take one complete packet (fixed header included) off the front of `buf`,
/// or `None` when more bytes are needed.
pub fn take_frame(buf: &mut BytesMut, max_size: usize) -> Result<Option<Bytes>, FrameError> {
    let mut remaining: usize = 0;
    let mut shift = 0u32;
    let mut header_len = 1usize;
    loop {
        let Some(&byte) = buf.get(header_len) else {
            return Ok(None);
        };
        header_len += 1;
        remaining |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if header_len > 4 {
            return Err(FrameError::MalformedLength);
        }
    }
    let total = header_len + remaining;
    if total > max_size {
        return Err(FrameError::TooLarge(total));
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(total).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_header_and_body() {
        let mut buf = BytesMut::from(&[0x40u8][..]);
        assert_eq!(take_frame(&mut buf, 1024), Ok(None));
        buf.extend_from_slice(&[0x02, 0x00]);
        assert_eq!(take_frame(&mut buf, 1024), Ok(None));
        buf.extend_from_slice(&[0x01, 0xd0, 0x00]);
        let frame = take_frame(&mut buf, 1024);
        assert_eq!(
            frame,
            Ok(Some(Bytes::from_static(&[0x40, 0x02, 0x00, 0x01])))
        );
        assert_eq!(&buf[..], &[0xd0, 0x00]);
        assert_eq!(
            take_frame(&mut buf, 1024),
            Ok(Some(Bytes::from_static(&[0xd0, 0x00])))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn multi_byte_length() {
        // 321 = 0xC1 0x02
        let mut buf = BytesMut::from(&[0x30u8, 0xc1, 0x02][..]);
        buf.extend_from_slice(&[0u8; 321]);
        let frame = take_frame(&mut buf, 1024);
        assert_eq!(frame.map(|f| f.map(|b| b.len())), Ok(Some(324)));
    }

    #[test]
    fn refuses_five_byte_length_and_oversize() {
        let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert_eq!(take_frame(&mut buf, 1024), Err(FrameError::MalformedLength));
        let mut buf = BytesMut::from(&[0x30u8, 0xff, 0x7f][..]);
        assert_eq!(take_frame(&mut buf, 1024), Err(FrameError::TooLarge(16386)));
    }
}
