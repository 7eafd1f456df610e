//! Records of the `DATA` ring (a `DataHeader` and a snippet of payload)
//! for the L7 engine, decoded with length checks.

use weft_common::data::DataHeader;

use super::decode::DecodeError;

/// One captured read or write.
#[derive(Debug, Clone)]
pub struct DataRecord {
    pub header: DataHeader,
    pub payload: Vec<u8>,
}

/// Splits a ring record into header and payload.
pub fn decode(bytes: &[u8]) -> Result<DataRecord, DecodeError> {
    let header_len = std::mem::size_of::<DataHeader>();
    if bytes.len() < header_len {
        return Err(DecodeError {
            got: bytes.len(),
            expected: header_len,
        });
    }
    // SAFETY: the length is checked and DataHeader is plain old data.
    let header = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DataHeader>()) };
    let captured = header.captured_len as usize;
    let payload = bytes
        .get(header_len..header_len + captured)
        .ok_or(DecodeError {
            got: bytes.len(),
            expected: header_len + captured,
        })?;
    Ok(DataRecord {
        header,
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_payload() {
        let header = DataHeader {
            sk: 7,
            captured_len: 3,
            total_len: 10,
            ..DataHeader::default()
        };
        // SAFETY: viewing a POD value as bytes.
        let mut bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw const header).cast::<u8>(),
                std::mem::size_of::<DataHeader>(),
            )
        }
        .to_vec();
        bytes.extend_from_slice(b"GET");
        let r = decode(&bytes).unwrap();
        assert_eq!(r.header.sk, 7);
        assert_eq!(r.payload, b"GET");
        // A header that claims more payload than the record holds.
        bytes.pop();
        assert!(decode(&bytes).is_err());
        assert!(decode(&bytes[..10]).is_err());
    }
}
