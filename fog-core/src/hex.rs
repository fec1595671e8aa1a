//! Lowercase hex, as the signal protocol writes nonces, signatures, sessions and secrets.

/// `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// Hex (either case) as bytes; `None` when it is not hex.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .ok()
}

/// Hex of exactly `N` bytes.
pub fn decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    decode(text)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(super::encode(&[0, 171]), "00ab");
        assert_eq!(super::decode("00AB"), Some(vec![0, 171]));
        assert_eq!(super::decode("0g"), None);
        assert_eq!(super::decode("abc"), None);
        assert_eq!(super::decode_array::<2>("00ab"), Some([0, 171]));
        assert_eq!(super::decode_array::<3>("00ab"), None);
    }
}
