//! Reading request bodies: JSON objects with required, typed fields.

use crate::errors::ApiError;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A parsed JSON object body.
pub type Object = Map<String, Value>;

/// Parses the body as a JSON object; anything else is 400 code 2001.
pub fn object(body: &[u8]) -> Result<Object, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::syntax("expected a JSON object")),
        Err(_) => Err(ApiError::syntax("malformed JSON")),
    }
}

/// Parses the body as a JSON array of at most `max` items; anything else
/// is 400 (2001 for the shape, 2003 for the count).
pub fn array(body: &[u8], max: usize) -> Result<Vec<Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(values)) => bounded(values, max),
        Ok(_) => Err(ApiError::syntax("expected a JSON array")),
        Err(_) => Err(ApiError::syntax("malformed JSON")),
    }
}

/// Items of a delivery that may be one JSON object or an array of them,
/// left unparsed (slices of `body`), and whether it was an array. Anything
/// but an object or an array is 400 code 2001; more than `max` items 2003.
pub fn raw_items(body: &[u8], max: usize) -> Result<(Vec<&RawValue>, bool), ApiError> {
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|_| ApiError::syntax("malformed JSON"))?;
            if items.len() > max {
                return Err(ApiError::incorrect("body", format!("{} items, at most {max}", items.len())));
            }
            Ok((items, true))
        }
        Some(b'{') => {
            let item: &RawValue = serde_json::from_slice(body).map_err(|_| ApiError::syntax("malformed JSON"))?;
            Ok((vec![item], false))
        }
        Some(_) => match serde_json::from_slice::<Value>(body) {
            Ok(_) => Err(ApiError::syntax("expected a JSON object or an array of them")),
            Err(_) => Err(ApiError::syntax("malformed JSON")),
        },
        None => Err(ApiError::syntax("empty body")),
    }
}

/// An id as sent (a string, or a number) when it can name a record: 1 to
/// 128 characters, no `/`, no control characters or spaces. Uuids are
/// lower-cased (Evotor's ids compare case-insensitively).
pub fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => id_str(text),
        Value::Number(number) => id_str(&number.to_string()),
        _ => None,
    }
}

/// [`id_text`] of a text (a path segment, say).
pub fn id_str(text: &str) -> Option<String> {
    let text = text.trim();
    let usable =
        (1..=128).contains(&text.len()) && !text.chars().any(|c| c == '/' || c.is_control() || c.is_whitespace());
    usable.then(|| if crate::inventory::is_uuid(text) { text.to_ascii_lowercase() } else { text.to_owned() })
}

/// `values` when there are at most `max` of them; else 400 code 2003.
pub fn bounded(values: Vec<Value>, max: usize) -> Result<Vec<Value>, ApiError> {
    if values.len() > max {
        return Err(ApiError::incorrect("body", format!("{} items, at most {max}", values.len())));
    }
    Ok(values)
}

/// A required string field: missing (or null) → 2002; not a string → 2001.
pub fn required_str<'a>(object: &'a Object, field: &str) -> Result<&'a str, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(ApiError::missing(field)),
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(ApiError::wrong_type(field, "a string")),
    }
}

/// Whether `id` is an Evotor user id: `^[0-9]{2}-[0-9]{15}$`.
pub fn is_user_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 18 && bytes[2] == b'-' && bytes.iter().enumerate().all(|(i, b)| i == 2 || b.is_ascii_digit())
}

/// The Evotor user id of a body, under `userId` or its old name `userUuid`;
/// returns the id and the field name used (answers use the same name).
pub fn user_id(object: &Object) -> Result<(String, &'static str), ApiError> {
    let field = if object.contains_key("userId") || !object.contains_key("userUuid") { "userId" } else { "userUuid" };
    let id = required_str(object, field)?;
    if !is_user_id(id) {
        return Err(ApiError::incorrect(field, id));
    }
    Ok((id.to_owned(), field))
}

/// Decodes `%XX` escapes and `+`; `None` when the result is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let hex = |byte: u8| char::from(byte).to_digit(16).map(|digit| digit as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = match bytes.get(index..index + 3) {
            Some([b'%', high, low]) => hex(*high).zip(hex(*low)).map(|(high, low)| high << 4 | low),
            _ => None,
        };
        match (escaped, bytes[index]) {
            (Some(byte), _) => {
                out.push(byte);
                index += 2;
            }
            (None, b'+') => out.push(b' '),
            (None, byte) => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(value: Value) -> Object {
        value.as_object().cloned().expect("object")
    }

    #[test]
    fn user_id_pattern() {
        assert!(is_user_id("01-000000000000001"));
        for bad in [
            "1-000000000000001",
            "01-00000000000001",
            "01_000000000000001",
            "ab-000000000000001",
            "01-0000000000000011",
            "",
        ] {
            assert!(!is_user_id(bad), "{bad}");
        }
    }

    #[test]
    fn user_id_is_read_under_either_name() {
        let (id, field) = user_id(&obj(json!({"userUuid": "01-000000000000001"}))).expect("ok");
        assert_eq!((id.as_str(), field), ("01-000000000000001", "userUuid"));
        let (_, field) = user_id(&obj(json!({"userId": "01-000000000000001"}))).expect("ok");
        assert_eq!(field, "userId");
        assert_eq!(user_id(&obj(json!({}))).map_err(|e| (e.code, e.subject)), Err((2002, Some("userId".into()))));
        assert_eq!(user_id(&obj(json!({"userId": 5}))).map_err(|e| e.code), Err(2001));
        assert_eq!(user_id(&obj(json!({"userId": "x"}))).map_err(|e| e.code), Err(2003));
    }

    #[test]
    fn non_objects_are_syntax_errors() {
        for body in [&b"[1]"[..], b"nope", b"", b"\"s\"", b"{\"a\":"] {
            assert_eq!(object(body).map_err(|e| e.code), Err(2001));
        }
    }

    #[test]
    fn deliveries_are_one_object_or_an_array() {
        let (items, array) = raw_items(br#" [{"a":1}, {"b": [2]}] "#, 10).expect("array");
        assert!(array);
        assert_eq!(items.iter().map(|raw| raw.get()).collect::<Vec<_>>(), [r#"{"a":1}"#, r#"{"b": [2]}"#]);
        let (items, array) = raw_items(br#"{"a":1}"#, 10).expect("object");
        assert!(!array);
        assert_eq!(items.len(), 1);
        for bad in [&b"5"[..], b"\"x\"", b"", b"[1,", b"{"] {
            assert_eq!(raw_items(bad, 10).map_err(|e| e.code).err(), Some(2001), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(raw_items(b"[{},{},{}]", 2).map_err(|e| e.code).err(), Some(2003));
    }

    #[test]
    fn ids_are_usable_texts_with_uuids_in_lower_case() {
        assert_eq!(
            id_text(&json!("20170228-F4F1-401B-80FA-9ECCA8451FFB")).as_deref(),
            Some("20170228-f4f1-401b-80fa-9ecca8451ffb")
        );
        assert_eq!(id_text(&json!("Doc-7")).as_deref(), Some("Doc-7"));
        assert_eq!(id_text(&json!(42)).as_deref(), Some("42"));
        for bad in [json!(""), json!("a/b"), json!("a b"), json!("x".repeat(129)), json!(null), json!({})] {
            assert_eq!(id_text(&bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_give_2001(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Err(err) = object(&body) {
                prop_assert_eq!(err.code, 2001);
            }
        }
    }
}
