//! Reading request bodies: JSON objects with required, typed fields.

use crate::errors::ApiError;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A parsed JSON object body.
pub type Object = Map<String, Value>;

/// Parses the body as a JSON object; anything else is 400 code 2001.
pub fn object(body: &[u8]) -> Result<Object, ApiError> {
    if body.len() > MAX_ITEM_BYTES {
        return Err(ApiError::too_large("an item", MAX_ITEM_BYTES));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::syntax("expected a JSON object")),
        Err(_) => Err(ApiError::syntax("malformed JSON")),
    }
}

/// Parses the body as a JSON array of at most `max` items; anything else
/// is 400 (2001 for the shape, 2003 for the count). Items are counted while
/// they are parsed: a huge array is refused at item `max + 1`, before the
/// rest of it takes memory.
pub fn array(body: &[u8], max: usize) -> Result<Vec<Value>, ApiError> {
    match first_byte(body) {
        Some(b'[') => {
            let raws: Vec<&RawValue> = bounded_array(body, max)?;
            within_item_limit(&raws)?;
            raws.iter()
                .map(|raw| serde_json::from_str(raw.get()).map_err(|_| ApiError::syntax("malformed JSON")))
                .collect()
        }
        _ => match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => Err(ApiError::syntax("expected a JSON array")),
            Err(_) => Err(ApiError::syntax("malformed JSON")),
        },
    }
}

/// Largest item a delivery may carry (a store, a terminal, an employee, a
/// product, a receipt, a billing event): each is kept as received in one
/// record, which the store holds up to 4 MiB. Past it the delivery is
/// answered 413 (documents, stored in parts, are not held to it).
pub const MAX_ITEM_BYTES: usize = 3_500_000;

/// 413 when any of `items` is over [`MAX_ITEM_BYTES`].
pub fn within_item_limit(items: &[&RawValue]) -> Result<(), ApiError> {
    match items.iter().any(|raw| raw.get().len() > MAX_ITEM_BYTES) {
        true => Err(ApiError::too_large("an item", MAX_ITEM_BYTES)),
        false => Ok(()),
    }
}

/// The first byte of `body` that is not white space.
fn first_byte(body: &[u8]) -> Option<u8> {
    body.iter().find(|byte| !byte.is_ascii_whitespace()).copied()
}

/// The message of the error that ends a parse at too many items.
const TOO_MANY: &str = "evogate: more items than allowed";

/// A JSON array of at most `max` items of `T`, counted as they are parsed.
struct Bounded<T> {
    max: usize,
    items: std::marker::PhantomData<T>,
}

impl<'de, T: serde::Deserialize<'de>> serde::de::DeserializeSeed<'de> for Bounded<T> {
    type Value = Vec<T>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Vec<T>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an array of at most {} items", self.max)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            if items.len() == self.max {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// Parses `body`, a JSON array, into at most `max` items.
fn bounded_array<'de, T: serde::Deserialize<'de>>(body: &'de [u8], max: usize) -> Result<Vec<T>, ApiError> {
    use serde::de::DeserializeSeed as _;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed = Bounded { max, items: std::marker::PhantomData }.deserialize(&mut deserializer);
    match parsed.and_then(|items| deserializer.end().map(|()| items)) {
        Ok(items) => Ok(items),
        Err(err) if err.to_string().starts_with(TOO_MANY) => {
            Err(ApiError::incorrect("body", format!("more than {max} items")))
        }
        Err(_) => Err(ApiError::syntax("malformed JSON")),
    }
}

/// Items of a delivery that may be one JSON object or an array of them,
/// left unparsed (slices of `body`), and whether it was an array. Anything
/// but an object or an array is 400 code 2001; more than `max` items 2003.
pub fn raw_items(body: &[u8], max: usize) -> Result<(Vec<&RawValue>, bool), ApiError> {
    match first_byte(body).as_ref() {
        Some(b'[') => Ok((bounded_array(body, max)?, true)),
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
    id_as_sent(text).map(|id| if is_uuid(&id) { id.to_ascii_lowercase() } else { id })
}

/// A usable id exactly as it was sent (trimmed): what answers show; keys
/// take its [`id_str`] form, so ids compare case-insensitively.
pub fn id_as_sent(text: &str) -> Option<String> {
    let text = text.trim();
    let usable =
        (1..=128).contains(&text.len()) && !text.chars().any(|c| c == '/' || c.is_control() || c.is_whitespace());
    usable.then(|| text.to_owned())
}

/// A required string field of a top-level object ([`Fields::required_str`]).
pub fn required_str<'a>(object: &'a Object, field: &str) -> Result<&'a str, ApiError> {
    Fields::of(object).required_str(field)
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

/// Whether `id` is a UUID in the canonical 8-4-4-4-12 hex form, version
/// 1–5, RFC 4122 variant (either case).
pub fn is_uuid(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
        && (b'1'..=b'5').contains(&bytes[14])
        && matches!(bytes[19], b'8' | b'9' | b'a' | b'b' | b'A' | b'B')
}

/// The fields of one JSON object, read by type, each error naming the
/// field by its JSON path (`[3].uuid` for field `uuid` of a batch's item 3)
/// as the subject of the Evotor error or the text of a data issue.
///
/// A field set to `null` reads as absent: Evotor sends both for "not given".
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    object: &'a Object,
    /// The object's own path with its trailing `.`, or empty at the top.
    at: &'a str,
}

impl<'a> Fields<'a> {
    /// The fields of a body's top-level object.
    pub fn of(object: &'a Object) -> Self {
        Self { object, at: "" }
    }

    /// The fields of the object at path `at` (with its trailing `.`, e.g. `[3].`).
    pub fn at(object: &'a Object, at: &'a str) -> Self {
        Self { object, at }
    }

    /// The path of `field`: the subject of its errors.
    pub fn path(&self, field: &str) -> String {
        format!("{}{field}", self.at)
    }

    /// The field's value; `None` when it is absent or `null`.
    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.object.get(field).filter(|value| !value.is_null())
    }

    /// The field, which must be given: absent or `null` → 2002.
    pub fn required(&self, field: &str) -> Result<&'a Value, ApiError> {
        self.get(field).ok_or_else(|| ApiError::missing(&self.path(field)))
    }

    /// A required string: absent → 2002; not a string → 2001.
    pub fn required_str(&self, field: &str) -> Result<&'a str, ApiError> {
        self.required(field).and_then(|value| self.as_str(field, value))
    }

    /// An optional string: not a string → 2001.
    pub fn optional_str(&self, field: &str) -> Result<Option<&'a str>, ApiError> {
        self.get(field).map(|value| self.as_str(field, value)).transpose()
    }

    /// A required boolean: absent → 2002; not a boolean → 2001.
    pub fn required_bool(&self, field: &str) -> Result<bool, ApiError> {
        self.required(field).and_then(|value| self.as_bool(field, value))
    }

    /// An optional boolean: not a boolean → 2001.
    pub fn optional_bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        self.get(field).map(|value| self.as_bool(field, value)).transpose()
    }

    /// A required UUID, lower-cased: absent → 2002; not a string → 2001; not a UUID → 2003.
    pub fn required_uuid(&self, field: &str) -> Result<String, ApiError> {
        self.required(field).and_then(|value| self.as_uuid(field, value))
    }

    /// An optional UUID, lower-cased: not a string → 2001; not a UUID → 2003.
    pub fn optional_uuid(&self, field: &str) -> Result<Option<String>, ApiError> {
        self.get(field).map(|value| self.as_uuid(field, value)).transpose()
    }

    /// A required id ([`id_text`]: a string or number that can name a
    /// record): absent → 2002; unusable → 2003.
    pub fn required_id(&self, field: &str) -> Result<String, ApiError> {
        let value = self.required(field)?;
        id_text(value).ok_or_else(|| ApiError::incorrect(&self.path(field), value.clone()))
    }

    /// An optional object: not an object → 2001.
    pub fn optional_object(&self, field: &str) -> Result<Option<&'a Object>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(object)) => Ok(Some(object)),
            Some(_) => Err(ApiError::wrong_type(&self.path(field), "an object")),
        }
    }

    /// A text field read leniently, for data kept as received: its text,
    /// or `None` with what is wrong noted in `problems` (by field name: the
    /// item's data issue names the item) — absent or blank when `required`,
    /// longer than `max_chars`, not a string.
    pub fn noted_text(
        &self,
        field: &str,
        required: bool,
        max_chars: usize,
        problems: &mut Vec<String>,
    ) -> Option<&'a str> {
        match self.get(field) {
            None if required => problems.push(format!("{field} missing")),
            None => {}
            Some(Value::String(text)) if required && text.trim().is_empty() => problems.push(format!("{field} empty")),
            Some(Value::String(text)) if text.chars().count() > max_chars => {
                problems.push(format!("{field} longer than {max_chars} characters"));
            }
            Some(Value::String(text)) => return Some(text),
            Some(other) => problems.push(format!("{field} is not a string: {other}")),
        }
        None
    }

    fn as_str(&self, field: &str, value: &'a Value) -> Result<&'a str, ApiError> {
        value.as_str().ok_or_else(|| ApiError::wrong_type(&self.path(field), "a string"))
    }

    fn as_bool(&self, field: &str, value: &Value) -> Result<bool, ApiError> {
        value.as_bool().ok_or_else(|| ApiError::wrong_type(&self.path(field), "a boolean"))
    }

    fn as_uuid(&self, field: &str, value: &Value) -> Result<String, ApiError> {
        let text = self.as_str(field, value)?;
        if !is_uuid(text) {
            return Err(ApiError::incorrect(&self.path(field), text));
        }
        Ok(text.to_ascii_lowercase())
    }
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

    #[test]
    fn fields_read_by_type_with_null_as_absent_and_errors_naming_the_json_path() {
        let object = obj(json!({
            "name": "Till", "flag": true, "nothing": null, "number": 5,
            "uuid": "20170228-F4F1-401B-80FA-9ECCA8451FFB", "bad": "nope", "nested": {"a": 1}
        }));
        let fields = Fields::at(&object, "[3].");
        let subject = |err: ApiError| (err.code, err.subject.unwrap_or_default());
        assert_eq!(fields.required_str("name").expect("name"), "Till");
        assert_eq!(fields.required_str("nothing").map_err(subject), Err((2002, "[3].nothing".into())));
        assert_eq!(fields.required_str("absent").map_err(subject), Err((2002, "[3].absent".into())));
        assert_eq!(fields.required_str("number").map_err(subject), Err((2001, "[3].number".into())));
        assert_eq!(fields.optional_str("nothing").expect("null is absent"), None);
        assert!(fields.required_bool("flag").expect("flag"));
        assert_eq!(fields.optional_bool("name").map_err(subject), Err((2001, "[3].name".into())));
        assert_eq!(fields.required_uuid("uuid").expect("uuid"), "20170228-f4f1-401b-80fa-9ecca8451ffb");
        assert_eq!(fields.optional_uuid("bad").map_err(subject), Err((2003, "[3].bad".into())));
        assert_eq!(fields.required_id("number").expect("a number names a record"), "5");
        assert_eq!(fields.optional_object("nested").expect("object").map(Object::len), Some(1));
        assert_eq!(fields.optional_object("flag").map_err(subject), Err((2001, "[3].flag".into())));
        let mut problems = Vec::new();
        assert_eq!(fields.noted_text("name", true, 3, &mut problems), None);
        assert_eq!(fields.noted_text("nothing", true, 10, &mut problems), None);
        assert_eq!(fields.noted_text("number", false, 10, &mut problems), None);
        assert_eq!(fields.noted_text("absent", false, 10, &mut problems), None);
        assert_eq!(problems, ["name longer than 3 characters", "nothing missing", "number is not a string: 5"]);
        assert_eq!(Fields::of(&object).path("name"), "name");
    }

    #[test]
    fn uuids_are_canonical_versions_1_to_5_of_the_rfc_variant_in_either_case() {
        assert!(is_uuid("20170228-f4f1-401b-80fa-9ecca8451ffb"));
        assert!(is_uuid("20170228-F4F1-401B-80FA-9ECCA8451FFB"));
        for bad in [
            "",
            "20170228-f4f1-401b-80fa-9ecca8451ff",
            "20170228f4f1-401b-80fa-9ecca8451ffba",
            "20170228-f4f1-601b-80fa-9ecca8451ffb",
            "20170228-f4f1-401b-c0fa-9ecca8451ffb",
            "2017022g-f4f1-401b-80fa-9ecca8451ffb",
        ] {
            assert!(!is_uuid(bad), "{bad}");
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

    #[test]
    fn arrays_are_counted_while_parsed_and_refused_past_their_limit() {
        let within = array(b"[1, 2, 3]", 3).expect("three fit");
        assert_eq!(within.len(), 3);
        let over = array(b"[1, 2, 3, 4]", 3).expect_err("four do not");
        assert_eq!((over.status, over.code), (400, 2003));
        // The parse stops at the first item past the limit: what follows is never read.
        let mut huge = b"[".to_vec();
        huge.extend(std::iter::repeat_n(&b"0,"[..], 1_000_000).flatten());
        huge.extend_from_slice(b"this is not JSON");
        let refused = array(&huge, 10_000).expect_err("a million items");
        assert_eq!(refused.code, 2003, "refused for its count, not for what comes after it");
        let (raws, _) = raw_items(b"[{}, {}]", 2).expect("two fit");
        assert_eq!(raws.len(), 2);
        assert_eq!(raw_items(&huge, 10_000).map(|_| ()).expect_err("refused").code, 2003);
        assert_eq!(array(b"{}", 3).expect_err("an object").code, 2001);
        assert_eq!(array(b"[1, 2", 3).expect_err("cut short").code, 2001);
        assert_eq!(array(b"[1] x", 3).expect_err("trailing bytes").code, 2001);
    }
}
