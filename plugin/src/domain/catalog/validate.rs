//! Validation of products and groups, Evotor side and partner side alike.
//!
//! The rule: refuse what breaks meaning (missing ids, wrong JSON types,
//! negative prices, more than 3 decimals where the spec allows 3), keep as
//! given what Evotor may extend over time (product types, VAT rates,
//! measure names) and log such a value once.

use crate::errors::ApiError;
use crate::input::Fields;
use serde_json::{Map, Number, Value};

/// Product types whose required fields are known.
const KNOWN_TYPES: &[&str] = &["NORMAL", "ALCOHOL_MARKED", "ALCOHOL_NOT_MARKED", "SERVICE"];
/// VAT rates seen so far; others are kept and logged once.
const KNOWN_TAXES: &[&str] = &[
    "NO_VAT",
    "VAT_0",
    "VAT_5",
    "VAT_5_105",
    "VAT_7",
    "VAT_7_107",
    "VAT_10",
    "VAT_10_110",
    "VAT_18",
    "VAT_18_118",
    "VAT_20",
    "VAT_20_120",
    "VAT_22",
    "VAT_22_122",
];
/// Measure names of the spec; others are kept and logged once.
const KNOWN_MEASURES: &[&str] = &["", "шт", "кг", "л", "м", "км", "м2", "м3", "компл", "упак", "ед", "дроб"];

/// Longest barcode or alcohol code, in bytes.
const MAX_CODE_BYTES: usize = 128;
/// Most barcodes or alcohol codes of one product.
const MAX_CODES: usize = 100;
/// Longest description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 4096;

/// A product or group that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Its uuid, lower case.
    pub uuid: String,
    /// Its group's uuid, lower case.
    pub parent: Option<String>,
    /// Its barcodes, each once.
    pub barcodes: Vec<String>,
    /// The object as given, with `uuid` and `parentUuid` in lower case.
    pub data: Map<String, Value>,
    /// What looks wrong in it, when it was taken all the same ([`lenient_item`]).
    pub problems: Vec<String>,
    /// When Evotor made this change, Unix milliseconds (an event's
    /// `timestamp`, the cloud's `updated_at`); `None`: when it arrived.
    pub changed_ms: Option<i64>,
}

/// A value of an extensible enumeration that this build does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// `type`, `tax` or `measureName`.
    pub field: &'static str,
    /// The value as given.
    pub value: String,
}

/// Which fields each product type requires, and which of them may be `null`.
fn required_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "NORMAL" => &["allowToSell", "measureName", "price", "quantity", "tax"],
        "ALCOHOL_NOT_MARKED" => &[
            "alcoholByVolume",
            "alcoholProductKindCode",
            "allowToSell",
            "barCodes",
            "code",
            "description",
            "measureName",
            "parentUuid",
            "price",
            "quantity",
            "tareVolume",
            "tax",
        ],
        "ALCOHOL_MARKED" => &[
            "alcoCodes",
            "alcoholByVolume",
            "alcoholProductKindCode",
            "allowToSell",
            "measureName",
            "parentUuid",
            "price",
            "quantity",
            "tareVolume",
            "tax",
        ],
        "SERVICE" => &["measureName", "price", "tax"],
        _ => &[],
    }
}

/// Fields that the spec marks `x-nullable`: required means present, `null` allowed.
const NULLABLE: &[&str] = &[
    "parentUuid",
    "description",
    "articleNumber",
    "barCodes",
    "alcoCodes",
    "alcoholByVolume",
    "alcoholProductKindCode",
    "tareVolume",
    "attributes",
];

/// Checks item `index` of a batch; `unknown` collects extensible values this build does not know.
pub fn item(value: Value, index: usize, unknown: &mut Vec<Unknown>) -> Result<Item, ApiError> {
    let at = |field: &str| format!("[{index}].{field}");
    let Value::Object(data) = value else {
        return Err(ApiError::wrong_type(&format!("[{index}]"), "an object"));
    };
    let prefix = format!("[{index}].");
    let fields = Fields::at(&data, &prefix);
    let uuid = fields.required_uuid("uuid")?;
    let group = fields.required_bool("group")?;
    let name = fields.required_str("name")?;
    if !(1..=100).contains(&name.chars().count()) {
        return Err(ApiError::incorrect(&at("name"), format!("<{} characters>", name.chars().count())));
    }
    let parent = fields.optional_uuid("parentUuid")?;
    if parent.as_deref() == Some(uuid.as_str()) {
        return Err(ApiError::incorrect(&at("parentUuid"), uuid.as_str()));
    }
    let kind = fields.optional_str("type")?.map(str::to_owned);
    if kind.as_deref() == Some("") {
        return Err(ApiError::incorrect(&at("type"), ""));
    }
    match (group, &kind) {
        (true, Some(kind)) => return Err(ApiError::incorrect(&at("type"), kind.as_str())),
        (false, None) => return Err(ApiError::missing(&at("type"))),
        (false, Some(kind)) if !KNOWN_TYPES.contains(&kind.as_str()) => {
            unknown.push(Unknown { field: "type", value: kind.clone() });
        }
        _ => {}
    }
    for field in required_fields(kind.as_deref().unwrap_or_default()) {
        match data.get(*field) {
            None => return Err(ApiError::missing(&at(field))),
            Some(Value::Null) if !NULLABLE.contains(field) => return Err(ApiError::missing(&at(field))),
            _ => {}
        }
    }
    if data.contains_key("hasVariants") && !group {
        return Err(ApiError::incorrect(&at("hasVariants"), "only for groups"));
    }
    for (field, value) in &data {
        if matches!(value, Value::Null) {
            continue;
        }
        let subject = at(field);
        match field.as_str() {
            "price" | "costPrice" => number(value, &subject, 0.0, 9_999_999.99, None)?,
            "quantity" => number(value, &subject, -9_999_999.999, 9_999_999.999, Some(3))?,
            "alcoholByVolume" => number(value, &subject, 0.0, 99.999, Some(3))?,
            "tareVolume" => number(value, &subject, 0.0, 999.999, Some(3))?,
            "alcoholProductKindCode" => match value.as_u64() {
                Some(0..=999) => {}
                Some(_) | None if value.is_number() => return Err(ApiError::incorrect(&subject, value.clone())),
                _ => return Err(ApiError::wrong_type(&subject, "an integer")),
            },
            "allowToSell" | "hasVariants" if !value.is_boolean() => {
                return Err(ApiError::wrong_type(&subject, "a boolean"));
            }
            "tax" => {
                let tax = string(value, &subject, 1, 64)?;
                if !KNOWN_TAXES.contains(&tax) {
                    unknown.push(Unknown { field: "tax", value: tax.to_owned() });
                }
            }
            "measureName" => {
                let measure = string(value, &subject, 0, 64)?;
                if !KNOWN_MEASURES.contains(&measure) {
                    unknown.push(Unknown { field: "measureName", value: measure.to_owned() });
                }
            }
            "description" => drop(string(value, &subject, 0, MAX_DESCRIPTION_CHARS)?),
            "articleNumber" => drop(string(value, &subject, 0, 20)?),
            "code" => drop(string(value, &subject, 0, 10)?),
            "barCodes" | "alcoCodes" => drop(codes(value, &subject)?),
            "attributes" if !value.is_object() => return Err(ApiError::wrong_type(&subject, "an object")),
            _ => {}
        }
    }
    let barcodes = match data.get("barCodes") {
        Some(value @ Value::Array(_)) => codes(value, &at("barCodes"))?,
        _ => Vec::new(),
    };
    Ok(finish(uuid, parent, barcodes, data, Vec::new()))
}

/// The item with its barcodes once each and its ids written in lower case.
fn finish(
    uuid: String,
    parent: Option<String>,
    mut barcodes: Vec<String>,
    mut data: Map<String, Value>,
    problems: Vec<String>,
) -> Item {
    barcodes.sort_unstable();
    barcodes.dedup();
    data.insert("uuid".into(), Value::String(uuid.clone()));
    if let Some(parent) = &parent {
        data.insert("parentUuid".into(), Value::String(parent.clone()));
    }
    Item { uuid, parent, barcodes, data, problems, changed_ms: None }
}

/// Checks item `index` of a terminal's delivery: refused only without a
/// usable `uuid` (or when not an object); whatever [`item`] would refuse
/// besides is kept as given and named in [`Item::problems`].
pub fn lenient_item(value: Value, index: usize, unknown: &mut Vec<Unknown>) -> Result<Item, ApiError> {
    let Value::Object(data) = value else {
        return Err(ApiError::wrong_type(&format!("[{index}]"), "an object"));
    };
    let prefix = format!("[{index}].");
    let uuid = Fields::at(&data, &prefix).required_id("uuid")?;
    let strict = match item(Value::Object(data.clone()), index, unknown) {
        Ok(item) => return Ok(item),
        Err(err) => err,
    };
    let subject = strict.subject.as_deref().unwrap_or_default();
    let field = subject.split_once('.').map_or(subject, |(_, field)| field);
    let value = strict.value.as_ref().map(|value| format!(" {value}")).unwrap_or_default();
    let problem = format!("{field}: {}{value}", strict.reason);
    let parent = data.get("parentUuid").and_then(crate::input::id_text).filter(|parent| *parent != uuid);
    let barcodes: Vec<String> = match data.get("barCodes") {
        Some(Value::Array(codes)) => {
            codes.iter().filter_map(Value::as_str).filter(|code| is_code(code)).map(str::to_owned).collect()
        }
        _ => Vec::new(),
    };
    Ok(finish(uuid, parent, barcodes, data, vec![problem]))
}

/// A number within `min..=max` with at most `decimals` digits after the point.
fn number(value: &Value, subject: &str, min: f64, max: f64, decimals: Option<usize>) -> Result<(), ApiError> {
    let Value::Number(number) = value else {
        return Err(ApiError::wrong_type(subject, "a number"));
    };
    let float = number.as_f64().unwrap_or(f64::NAN);
    if !(min..=max).contains(&float) || decimals.is_some_and(|most| decimal_places(number) > most) {
        return Err(ApiError::incorrect(subject, value.clone()));
    }
    Ok(())
}

/// Digits after the decimal point of `number` as written (shortest round-trip form).
pub fn decimal_places(number: &Number) -> usize {
    if number.is_i64() || number.is_u64() {
        return 0;
    }
    // `f64`'s `Display` never uses exponent notation.
    let text = number.as_f64().unwrap_or_default().to_string();
    text.split_once('.').map_or(0, |(_, fraction)| fraction.len())
}

/// A string of `min..=max` characters.
fn string<'a>(value: &'a Value, subject: &str, min: usize, max: usize) -> Result<&'a str, ApiError> {
    let Value::String(text) = value else {
        return Err(ApiError::wrong_type(subject, "a string"));
    };
    let chars = text.chars().count();
    if chars < min || chars > max {
        return Err(ApiError::incorrect(subject, format!("<{chars} characters>")));
    }
    Ok(text)
}

/// Whether `code` is a barcode the catalog indexes: non-empty, printable,
/// at most `MAX_CODE_BYTES`. (A terminal's product may carry others; they are
/// kept in the product, reported, and not indexed.)
pub(crate) fn is_code(code: &str) -> bool {
    !code.is_empty() && code.len() <= MAX_CODE_BYTES && !code.chars().any(char::is_control)
}

/// A list of barcodes or alcohol codes: non-empty printable strings.
fn codes(value: &Value, subject: &str) -> Result<Vec<String>, ApiError> {
    let Value::Array(items) = value else {
        return Err(ApiError::wrong_type(subject, "an array"));
    };
    if items.len() > MAX_CODES {
        return Err(ApiError::incorrect(subject, format!("{} codes, at most {MAX_CODES}", items.len())));
    }
    items
        .iter()
        .enumerate()
        .map(|(n, code)| match code {
            Value::String(code) if is_code(code) => Ok(code.clone()),
            Value::String(_) => Err(ApiError::incorrect(&format!("{subject}[{n}]"), code.clone())),
            _ => Err(ApiError::wrong_type(&format!("{subject}[{n}]"), "a string")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const ID: &str = "01BA18B6-8707-4F47-8D9C-4DB058054CB2";
    const GROUP: &str = "1ddea16b-971b-4ee5-9798-1b29a7aa2e27";

    fn normal() -> Value {
        json!({"uuid": ID, "group": false, "name": "Cider", "type": "NORMAL", "allowToSell": true,
               "measureName": "шт", "price": 123.12, "quantity": 12, "tax": "VAT_20", "barCodes": ["2000000000060"]})
    }

    fn check(value: Value) -> Result<(Item, Vec<Unknown>), (u32, String)> {
        let mut unknown = Vec::new();
        item(value, 0, &mut unknown)
            .map(|item| (item, unknown))
            .map_err(|err| (err.code, err.subject.unwrap_or_default()))
    }

    fn with(mut base: Value, field: &str, value: Value) -> Value {
        base[field] = value;
        base
    }

    fn without(mut base: Value, field: &str) -> Value {
        base.as_object_mut().expect("object").remove(field);
        base
    }

    #[test]
    fn a_normal_product_is_kept_as_given_with_its_ids_in_lower_case() {
        let (item, unknown) = check(with(normal(), "extra", json!({"kept": true}))).expect("valid");
        assert_eq!(item.uuid, ID.to_lowercase());
        assert_eq!(item.data["uuid"], ID.to_lowercase());
        assert_eq!(item.data["extra"], json!({"kept": true}));
        assert_eq!(item.barcodes, ["2000000000060"]);
        assert!(unknown.is_empty());
    }

    #[test]
    fn each_type_needs_its_own_fields() {
        for field in ["allowToSell", "measureName", "price", "quantity", "tax", "type", "name", "group", "uuid"] {
            assert_eq!(check(without(normal(), field)).map(|_| ()), Err((2002, format!("[0].{field}"))), "{field}");
        }
        let service = json!({"uuid": ID, "group": false, "name": "Repair", "type": "SERVICE",
                             "measureName": "ед", "price": 10, "tax": "NO_VAT"});
        assert!(check(service.clone()).is_ok(), "a service needs no quantity");
        assert_eq!(check(without(service, "tax")).map(|_| ()), Err((2002, "[0].tax".into())));
        let beer = with(with(normal(), "type", json!("ALCOHOL_NOT_MARKED")), "barCodes", json!(["4600000000001"]));
        assert_eq!(check(beer.clone()).map(|_| ()), Err((2002, "[0].alcoholByVolume".into())));
        let beer = [
            ("alcoholByVolume", json!(4.5)),
            ("alcoholProductKindCode", json!(261)),
            ("code", json!("17")),
            ("description", Value::Null),
            ("parentUuid", Value::Null),
            ("tareVolume", json!(0.5)),
        ]
        .into_iter()
        .fold(beer, |beer, (field, value)| with(beer, field, value));
        assert!(check(beer.clone()).is_ok(), "nullable required fields may be null");
        let marked = with(with(beer, "type", json!("ALCOHOL_MARKED")), "alcoCodes", Value::Null);
        assert!(check(marked.clone()).is_ok());
        assert_eq!(check(without(marked, "alcoCodes")).map(|_| ()), Err((2002, "[0].alcoCodes".into())));
    }

    #[test]
    fn a_terminal_item_is_refused_only_without_an_id() {
        let lenient = |value: Value| {
            let mut unknown = Vec::new();
            lenient_item(value, 0, &mut unknown).map_err(|err| (err.code, err.subject.unwrap_or_default()))
        };
        assert_eq!(lenient(without(normal(), "uuid")).map(|_| ()), Err((2002, "[0].uuid".into())));
        assert_eq!(lenient(json!("x")).map(|_| ()), Err((2001, "[0]".into())));
        let group = json!({"uuid": GROUP, "group": true, "name": "Drinks", "type": "NORMAL", "parentUuid": ID});
        let kept = lenient(group.clone()).expect("kept");
        assert_eq!(kept.problems, ["type: incorrect \"NORMAL\""]);
        assert_eq!((kept.uuid.as_str(), kept.parent.as_deref()), (GROUP, Some(ID.to_lowercase().as_str())));
        let priced = lenient(with(normal(), "price", json!("12.50"))).expect("kept");
        assert_eq!(priced.data["price"], "12.50", "kept as sent");
        assert_eq!(priced.barcodes, ["2000000000060"]);
        assert!(lenient(normal()).expect("valid").problems.is_empty());
    }

    #[test]
    fn groups_have_no_type() {
        let group = json!({"uuid": GROUP, "group": true, "name": "Drinks", "hasVariants": false});
        assert!(check(group.clone()).is_ok());
        assert_eq!(check(with(group, "type", json!("NORMAL"))).map(|_| ()), Err((2003, "[0].type".into())));
        assert_eq!(
            check(with(normal(), "hasVariants", json!(true))).map(|_| ()),
            Err((2003, "[0].hasVariants".into()))
        );
    }

    #[test]
    fn meaning_breaking_values_are_refused() {
        let cases = [
            ("price", json!(-1), 2003),
            ("price", json!("12"), 2001),
            ("costPrice", json!(-0.01), 2003),
            ("quantity", json!(1.2345), 2003),
            ("quantity", json!(null), 2002),
            ("uuid", json!("not-a-uuid"), 2003),
            ("parentUuid", json!("x"), 2003),
            ("parentUuid", json!(ID), 2003),
            ("alcoholByVolume", json!(100), 2003),
            ("alcoholProductKindCode", json!(1.5), 2003),
            ("alcoholProductKindCode", json!("1"), 2001),
            ("barCodes", json!("123"), 2001),
            ("barCodes", json!([""]), 2003),
            ("barCodes", json!([5]), 2001),
            ("name", json!(""), 2003),
            ("name", json!("x".repeat(101)), 2003),
            ("allowToSell", json!("yes"), 2001),
            ("code", json!("12345678901"), 2003),
        ];
        for (field, value, code) in cases {
            let got = check(with(normal(), field, value.clone())).map(|_| ());
            assert_eq!(got.map_err(|(c, _)| c), Err(code), "{field} = {value}");
        }
        assert!(check(with(normal(), "quantity", json!(-2.125))).is_ok(), "stock may go negative");
        assert!(check(with(normal(), "quantity", json!(0.001))).is_ok());
    }

    #[test]
    fn extensible_values_are_kept_and_reported() {
        let (item, unknown) = check(with(
            with(with(normal(), "tax", json!("VAT_33")), "measureName", json!("пара")),
            "type",
            json!("TOBACCO"),
        ))
        .expect("kept");
        assert_eq!(item.data["tax"], "VAT_33");
        let fields: Vec<_> = unknown.iter().map(|u| (u.field, u.value.as_str())).collect();
        assert_eq!(fields, [("type", "TOBACCO"), ("measureName", "пара"), ("tax", "VAT_33")]);
        assert!(check(with(normal(), "tax", json!("VAT_22"))).expect("valid").1.is_empty(), "new rates are known");
    }

    proptest! {
        #[test]
        fn decimal_places_match_the_written_form(units in -10_000_000i64..10_000_000, places in 0u32..6) {
            let value: f64 = format!("{}.{}", units / 1000, (units % 1000).abs()).parse().unwrap_or(0.0)
                / 10f64.powi(places as i32);
            let number = Number::from_f64(value).expect("finite");
            let written = value.to_string();
            let expected = written.split_once('.').map_or(0, |(_, f)| f.len());
            prop_assert_eq!(decimal_places(&number), expected);
        }

        #[test]
        fn arbitrary_json_objects_never_panic(value in arbitrary_json()) {
            let mut unknown = Vec::new();
            let _ = item(value, 0, &mut unknown);
        }
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-zA-Z0-9 -]{0,40}".prop_map(Value::from),
            Just(Value::from(ID)),
        ];
        let field = prop_oneof![
            Just("uuid"),
            Just("group"),
            Just("name"),
            Just("type"),
            Just("price"),
            Just("quantity"),
            Just("barCodes"),
            Just("parentUuid"),
            Just("tax"),
            Just("alcoholProductKindCode"),
        ];
        let value = leaf.prop_recursive(2, 8, 4, |inner| proptest::collection::vec(inner, 0..4).prop_map(Value::from));
        proptest::collection::btree_map(field.prop_map(str::to_owned), value, 0..10)
            .prop_map(|map| Value::Object(map.into_iter().collect()))
    }
}
