//! How a backend keeps a value on disk: as given, or zstd-compressed when
//! that makes it smaller by a useful margin.
//!
//! Plugins store JSON records mostly: keys repeated in every record,
//! uuids and numbers as text. Compressed one by one, a record of a
//! kilobyte takes about half its size. A value shorter than
//! [`COMPRESS_FROM`] is left as it is (a compressed frame has a dozen
//! bytes of its own), and so is one that would not lose an eighth.
//!
//! `store.compression = "none"` turns compression off for what is written
//! from then on (a file system that compresses already, a CPU that counts
//! more than the disk); what was written compressed still reads, whichever
//! is set.
//!
//! The frame is zstd's standard one, with the content size in its header:
//! it is what the decoder allocates, bounded by [`MAX_VALUE_BYTES`] so a
//! damaged frame cannot ask for more than the store ever takes.

use super::{KvError, MAX_VALUE_BYTES};
use std::borrow::Cow;
use std::cell::RefCell;

/// How a store writes values: `store.compression` of the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd, value by value, where it saves an eighth (the default).
    #[default]
    Zstd,
    /// Every value as given.
    None,
}

/// Values shorter than this are stored as given.
pub(crate) const COMPRESS_FROM: usize = 64;

/// zstd's level: its fastest of the standard ones. Higher levels gain a
/// few percent on records of a kilobyte for several times the time.
const LEVEL: i32 = 1;

thread_local! {
    // A context each way per thread: making one costs more than compressing a record.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `value` compressed, when that saves at least an eighth of it; `None`:
/// store it as it is.
pub(crate) fn compress(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() < COMPRESS_FROM {
        return None;
    }
    let packed = COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let compressor = match cell.as_mut() {
            Some(compressor) => compressor,
            None => cell.insert(zstd::bulk::Compressor::new(LEVEL).ok()?),
        };
        compressor.compress(value).ok()
    })?;
    (packed.len() <= value.len() - value.len() / 8).then_some(packed)
}

/// Reverses [`compress`].
pub(crate) fn decompress(packed: &[u8]) -> Result<Vec<u8>, KvError> {
    let corrupt = |why: &str| KvError::Unavailable(format!("corrupt compressed value: {why}"));
    let size = match zstd::zstd_safe::get_frame_content_size(packed) {
        Ok(Some(size)) => usize::try_from(size).map_err(|_| corrupt("too large"))?,
        Ok(None) | Err(_) => return Err(corrupt("no content size")),
    };
    if size > MAX_VALUE_BYTES {
        return Err(corrupt("larger than any value"));
    }
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let decompressor = match cell.as_mut() {
            Some(decompressor) => decompressor,
            None => cell.insert(zstd::bulk::Decompressor::new().map_err(|err| corrupt(&err.to_string()))?),
        };
        let value = decompressor.decompress(packed, size).map_err(|err| corrupt(&err.to_string()))?;
        if value.len() == size { Ok(value) } else { Err(corrupt("shorter than its header says")) }
    })
}

/// `value` as a backend keeps it: compressed (`true`) when `compression`
/// asks for it and [`compress`] finds it worth it, else as given.
pub(crate) fn pack(value: &[u8], compression: Compression) -> (bool, Cow<'_, [u8]>) {
    let packed = match compression {
        Compression::Zstd => compress(value),
        Compression::None => None,
    };
    match packed {
        Some(packed) => (true, Cow::Owned(packed)),
        None => (false, Cow::Borrowed(value)),
    }
}

/// A value framed for a backend that keeps it in a column of its own
/// (PostgreSQL): one byte saying how, then the bytes — `0` as given,
/// `1` compressed.
pub(crate) fn frame(value: &[u8], compression: Compression) -> Vec<u8> {
    let (compressed, bytes) = pack(value, compression);
    let mut out = Vec::with_capacity(1 + bytes.len());
    out.push(u8::from(compressed));
    out.extend_from_slice(&bytes);
    out
}

/// Reverses [`frame`].
pub(crate) fn unframe(mut framed: Vec<u8>) -> Result<Vec<u8>, KvError> {
    match framed.first() {
        Some(0) => {
            framed.remove(0);
            Ok(framed)
        }
        Some(1) => decompress(&framed[1..]),
        Some(tag) => Err(KvError::Unavailable(format!("corrupt value: unknown frame {tag}"))),
        None => Err(KvError::Unavailable("corrupt value: no frame".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_json_record_of_a_kilobyte_is_kept_in_about_half() {
        let record = serde_json::json!({
            "v": 1, "id": "9b3c51e2-6a1f-4f0e-8a2d-3c5e7f901b24", "storeId": "20170228-f4f1-401b-80fa-9ecca8451ffb",
            "type": "SELL", "closeDate": "2026-12-07T10:15:00.000+0000", "sum": "3548.00",
            "positions": (0..6).map(|n| serde_json::json!({
                "uuid": format!("5a188de4-49b8-4cb4-800e-eb6b5202{n:04}"), "name": format!("Tea {n}"),
                "price": 100 + n, "quantity": 1, "measureName": "шт", "tax": "VAT_18"
            })).collect::<Vec<_>>()
        })
        .to_string();
        let packed = compress(record.as_bytes()).expect("worth compressing");
        assert!(packed.len() * 2 < record.len() + record.len() / 5, "{} → {}", record.len(), packed.len());
        assert_eq!(decompress(&packed).expect("decompress"), record.as_bytes());
    }

    #[test]
    fn short_and_incompressible_values_are_left_as_they_are() {
        assert_eq!(compress(br#"{"v":1,"id":"e1"}"#), None);
        let mut noise = vec![0u8; 4096];
        getrandom::fill(&mut noise).expect("randomness");
        assert_eq!(compress(&noise), None);
    }

    #[test]
    fn a_damaged_frame_is_an_error_not_a_wrong_value() {
        let value = "abc".repeat(100);
        let mut packed = compress(value.as_bytes()).expect("compressible");
        assert!(decompress(&packed[..packed.len() - 3]).is_err(), "truncated");
        let last = packed.len() - 1;
        packed[last] ^= 0xff;
        if let Ok(read) = decompress(&packed) {
            assert_ne!(read, value.as_bytes(), "a changed frame that decodes must not pass as the value");
        }
        assert!(decompress(b"not a frame at all").is_err());
    }

    #[test]
    fn a_framed_value_says_how_it_is_kept() {
        let short = b"{}".to_vec();
        assert_eq!(frame(&short, Compression::Zstd), b"\0{}");
        let long = "{\"name\":\"Tea\"}".repeat(20);
        let framed = frame(long.as_bytes(), Compression::Zstd);
        assert_eq!(framed[0], 1);
        assert_eq!(unframe(framed).expect("unframe"), long.as_bytes());
        assert_eq!(unframe(frame(&short, Compression::Zstd)).expect("unframe"), short);
        // Without compression, the same value framed as given.
        let plain = frame(long.as_bytes(), Compression::None);
        assert_eq!((plain[0], &plain[1..]), (0, long.as_bytes()));
        assert_eq!(unframe(plain).expect("unframe"), long.as_bytes());
        assert!(unframe(b"\x07abc".to_vec()).is_err());
        assert!(unframe(Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn every_value_comes_back_as_it_was_stored(value in proptest::collection::vec(any::<u8>(), 0..3000),
                                                    repeats in 1usize..8) {
            let value = value.repeat(repeats);
            match compress(&value) {
                Some(packed) => {
                    prop_assert!(packed.len() < value.len());
                    prop_assert_eq!(decompress(&packed).expect("decompress"), value);
                }
                // A value three quarters repeats always loses far more than an eighth.
                None => prop_assert!(value.len() < 256 || repeats < 4, "{} bytes, {repeats} repeats", value.len()),
            }
        }
    }
}
