//! Conformance to Evotor's own definitions: the Swagger files of the
//! protocol (2017) and of the webhooks (2018), kept in `testdata/evotor-api`.
//!
//! For every operation the Evotor cloud calls on a partner service, a
//! request is built twice — once from every `example` the definitions give
//! (all properties), once as a minimal instance of the request schema
//! (required properties, plus the ids a delivery is known by) — and sent to
//! the plugin. Each must be accepted (2xx), and each answer must validate
//! against the operation's `200` schema, checked by a JSON Schema validator.

use evotor_partner::clock::FixedClock;
use evotor_partner::config::MapConfig;
use evotor_partner::http::{Request, Response};
use evotor_partner::kv::MemKv;
use evotor_partner::{Ctx, handle};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// The user the built requests name (the definitions' own example id).
const USER: &str = "01-000000000000001";
/// The store of the paths, and of every uuid the requests carry.
const UUID: &str = "20170228-f4f1-401b-80fa-9ecca8451ffb";
/// A barcode for commodity look-ups when the definitions give none.
const BARCODE: &str = "2000000000060";
/// Properties every built request carries even when the schema does not
/// require them: what a delivery is known by, and the credentials a login checks.
const ALWAYS: &[&str] =
    &["uuid", "id", "userId", "userUuid", "subscriptionId", "sequenceNumber", "type", "username", "password", "data"];

/// Every YAML file of the definitions, by path, as JSON.
struct Definitions {
    files: HashMap<PathBuf, Value>,
}

fn yaml_to_json(value: serde_norway::Value) -> Value {
    match value {
        serde_norway::Value::Null => Value::Null,
        serde_norway::Value::Bool(flag) => Value::Bool(flag),
        serde_norway::Value::Number(number) => {
            serde_json::to_value(&number).unwrap_or_else(|_| Value::String(number.to_string()))
        }
        serde_norway::Value::String(text) => Value::String(text),
        serde_norway::Value::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        serde_norway::Value::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let key = match key {
                        serde_norway::Value::String(key) => key,
                        other => serde_norway::to_string(&other).unwrap_or_default().trim().to_owned(),
                    };
                    (key, yaml_to_json(value))
                })
                .collect(),
        ),
        serde_norway::Value::Tagged(tagged) => yaml_to_json(tagged.value),
    }
}

/// `path` with `.` and `..` taken out.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

impl Definitions {
    fn load() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/evotor-api");
        let mut files = HashMap::new();
        for dir in ["protocol-2017", "protocol-2017/evotorCallbacks", "webhooks-2018"] {
            for entry in std::fs::read_dir(root.join(dir)).expect("the definitions are in testdata") {
                let path = entry.expect("entry").path();
                if path.extension().is_some_and(|ext| ext == "yaml") {
                    let text = std::fs::read_to_string(&path).expect("readable");
                    let value: serde_norway::Value =
                        serde_norway::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
                    files.insert(normalize(&path), yaml_to_json(value));
                }
            }
        }
        Self { files }
    }

    fn file(&self, path: &str) -> (PathBuf, &Value) {
        let path = normalize(&Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/evotor-api").join(path));
        let value = self.files.get(&path).unwrap_or_else(|| panic!("{} is loaded", path.display()));
        (path, value)
    }

    /// `value` (found in `file`) with every `$ref` replaced by what it names.
    fn resolve(&self, file: &Path, value: &Value, depth: usize) -> Value {
        assert!(depth < 64, "a $ref cycle at {}", file.display());
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref") {
                    let (target, pointer) = reference.split_once('#').unwrap_or((reference, ""));
                    let target = if target.is_empty() {
                        file.to_owned()
                    } else {
                        normalize(&file.parent().expect("a directory").join(target))
                    };
                    let document = self.files.get(&target).unwrap_or_else(|| panic!("{reference}: no such file"));
                    // The 2017 files name one definition they never give
                    // (`definitions.yaml#/events`): any JSON object is that.
                    let Some(found) = document.pointer(pointer) else { return json!({"type": "object"}) };
                    return self.resolve(&target, found, depth + 1);
                }
                Value::Object(
                    map.iter().map(|(key, value)| (key.clone(), self.resolve(file, value, depth + 1))).collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(|item| self.resolve(file, item, depth + 1)).collect()),
            other => other.clone(),
        }
    }
}

/// A Swagger 2.0 schema as JSON Schema (draft 4): `x-nullable` becomes a
/// `null` type, and what JSON Schema does not know (`type: enum`, empty
/// patterns, `required: true` on a property, examples) is left out.
fn json_schema(schema: &Value) -> Value {
    let Value::Object(map) = schema else { return schema.clone() };
    if let (Some(_), Some(inner)) = (map.get("in"), map.get("schema")) {
        return json_schema(inner);
    }
    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "example" | "discriminator" | "x-nullable" | "xml" | "readOnly" | "title" | "description" | "default"
            | "format" => {}
            "type"
                if !matches!(
                    value.as_str(),
                    Some("object" | "array" | "string" | "integer" | "number" | "boolean")
                ) => {}
            "pattern" if !value.is_string() => {}
            "pattern" => {
                // `\_` and `\-` outside a class are not escapes in the regex dialect.
                let pattern = value.as_str().unwrap_or_default().replace("\\_", "_");
                out.insert(key.clone(), Value::String(pattern));
            }
            "required" if !value.is_array() => {}
            "properties" => {
                let properties = value
                    .as_object()
                    .map(|properties| {
                        properties.iter().map(|(name, schema)| (name.clone(), json_schema(schema))).collect()
                    })
                    .unwrap_or_default();
                out.insert(key.clone(), Value::Object(properties));
            }
            "enum" => {
                out.insert(key.clone(), value.clone());
            }
            _ => {
                let converted = match value {
                    Value::Array(items) => Value::Array(items.iter().map(json_schema).collect()),
                    other => json_schema(other),
                };
                out.insert(key.clone(), converted);
            }
        }
    }
    if map.get("x-nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(kind)) = out.get("type").cloned() {
            out.insert("type".into(), json!([kind, "null"]));
        }
        if let Some(Value::Array(values)) = out.get_mut("enum") {
            values.push(Value::Null);
        }
    }
    Value::Object(out)
}

/// A value for a string schema without an example.
fn string_for(schema: &Value) -> Value {
    let pattern = schema["pattern"].as_str().unwrap_or_default();
    if pattern.contains("[89ab]") || schema["description"].as_str().is_some_and(|d| d.contains("uuid")) {
        Value::from(UUID)
    } else if pattern.contains("{15}") {
        Value::from(USER)
    } else if schema["format"] == "date-time" {
        Value::from("2017-04-20T18:26:37.753+0000")
    } else {
        Value::from("x")
    }
}

/// An instance of a (resolved, Swagger) schema: every property with `full`,
/// else the required ones and [`ALWAYS`]; leaves from their `example`.
fn instance(schema: &Value, full: bool) -> Value {
    if let (Some(_), Some(inner)) = (schema.get("in"), schema.get("schema")) {
        return instance(inner, full);
    }
    if let Some(parts) = schema["allOf"].as_array() {
        let mut merged = Value::Null;
        let siblings = schema.get("properties").map(|properties| json!({"properties": properties}));
        for part in parts.iter().chain(siblings.as_ref()) {
            let value = instance(part, full);
            match (&mut merged, value) {
                (Value::Object(into), Value::Object(from)) => into.extend(from),
                (Value::Null, value) => merged = value,
                (_, Value::Object(from)) if from.is_empty() => {}
                (_, value) => merged = value,
            }
        }
        return merged;
    }
    let properties = schema["properties"].as_object();
    // All examples as written, or for a minimal instance only those that obey their own schema.
    if properties.is_none()
        && let Some(example) = schema.get("example")
        && (full || valid(schema, example))
    {
        return example.clone();
    }
    if let Some(default) = schema.get("default") {
        return default.clone();
    }
    if let Some(first) = schema["enum"].as_array().and_then(|values| values.first()) {
        return first.clone();
    }
    match (schema["type"].as_str(), properties) {
        (_, Some(properties)) => {
            let required: Vec<&str> =
                schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let object = properties
                .iter()
                .filter(|(name, _)| full || required.contains(&name.as_str()) || ALWAYS.contains(&name.as_str()))
                .map(|(name, property)| (name.clone(), instance(property, full)))
                .collect();
            Value::Object(object)
        }
        (Some("array"), None) => Value::Array(vec![instance(&schema["items"], full)]),
        (Some("integer"), None) => schema.get("minimum").cloned().unwrap_or(json!(1)),
        (Some("number"), None) => json!(1),
        (Some("boolean"), None) => json!(false),
        (Some("object"), None) => json!({}),
        _ => string_for(schema),
    }
}

/// Whether `value` obeys the Swagger `schema`.
fn valid(schema: &Value, value: &Value) -> bool {
    validator(schema).is_ok_and(|validator| validator.is_valid(value))
}

/// A JSON Schema validator of a Swagger schema, formats not asserted (Evotor
/// writes `+0000` offsets, which RFC 3339 does not allow).
fn validator(schema: &Value) -> Result<jsonschema::Validator, String> {
    let mut schema = json_schema(schema);
    patch_known_defects(&mut schema);
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(false)
        .build(&schema)
        .map_err(|err| err.to_string())
}

/// Mends what is plainly a typo in the definitions: `commodity.scanCodes`
/// items must match `^[0-9]$`, one digit, where every barcode has 8 to 14.
fn patch_known_defects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("pattern").and_then(Value::as_str) == Some("^[0-9]$") {
                map.insert("pattern".into(), json!("^[0-9]+$"));
            }
            map.values_mut().for_each(patch_known_defects);
        }
        Value::Array(items) => items.iter_mut().for_each(patch_known_defects),
        _ => {}
    }
}

/// The plugin with its own store, as a partner would configure it.
struct World {
    kv: MemKv,
    config: MapConfig,
    clock: FixedClock,
}

impl World {
    fn new() -> Self {
        let config = MapConfig::from([
            ("server_bearer_token", "server"),
            ("partner_api_token", "partner"),
            ("password_argon2_memory_kib", "64"),
            ("password_argon2_iterations", "1"),
            ("billing_enforcement", "off"),
        ]);
        Self { kv: MemKv::default(), config, clock: FixedClock(1_764_000_000) }
    }

    fn call(&self, method: &str, target: &str, authorization: &str, body: Option<&Value>) -> Response {
        let mut request = Request::new(method, target).header("authorization", authorization);
        if let Some(body) = body {
            request = request.json(body);
        }
        handle(
            &Ctx {
                kv: &self.kv,
                config: &self.config,
                clock: &self.clock,
                http: &evotor_partner::outgoing::Scripted::default(),
            },
            &request,
        )
    }

    fn ok(&self, method: &str, target: &str, authorization: &str, body: Value) -> Value {
        let response = self.call(method, target, authorization, Some(&body));
        assert!((200..300).contains(&response.status), "setup {method} {target}: {}", text(&response));
        response.body_json()
    }

    /// Registers [`USER`]; returns the `Authorization` value of its user token.
    fn user(&self) -> String {
        let created =
            self.ok("POST", "/api/v1/user/create", "Bearer server", json!({"userId": USER, "username": "setup"}));
        format!("Bearer {}", created["token"].as_str().expect("token"))
    }
}

fn text(response: &Response) -> String {
    format!("{} {}", response.status, String::from_utf8_lossy(&response.body))
}

/// One operation the Evotor cloud calls, from one definitions file.
struct Operation {
    source: &'static str,
    method: String,
    path: String,
    parameters: Vec<Value>,
    answer: Option<Value>,
}

fn operations(definitions: &Definitions) -> Vec<Operation> {
    let mut out = Vec::new();
    for (source, file, prefix) in
        [("2017", "protocol-2017/evotorCallbacks/paths.yaml", ""), ("2018", "webhooks-2018/paths.yaml", "/partner.ru")]
    {
        let (path, paths) = definitions.file(file);
        for (route, item) in paths.as_object().expect("paths") {
            // The 2018 file describes Evotor's own API too: only the partner's paths are ours.
            let Some(route) = route.strip_prefix(prefix).filter(|route| route.starts_with("/api/")) else { continue };
            for (method, operation) in item.as_object().expect("path item") {
                let operation = definitions.resolve(&path, operation, 0);
                out.push(Operation {
                    source,
                    method: method.to_uppercase(),
                    path: route.to_owned(),
                    parameters: operation["parameters"].as_array().cloned().unwrap_or_default(),
                    answer: operation.pointer("/responses/200/schema").cloned(),
                });
            }
        }
    }
    out
}

/// Sends `operation` built with `full` or minimal instances; checks the
/// answer when the request obeys the definitions. Returns whether it did.
fn check(operation: &Operation, full: bool) -> Result<bool, String> {
    let world = World::new();
    let name = format!(
        "{} {} {} ({})",
        operation.source,
        operation.method,
        operation.path,
        if full { "examples" } else { "minimal" }
    );
    let mut body = None;
    let mut body_schema = None;
    let mut query = Vec::new();
    let mut server = true;
    for parameter in &operation.parameters {
        match parameter["in"].as_str() {
            Some("body") => {
                body = Some(instance(parameter, full));
                body_schema = Some(parameter.get("schema").unwrap_or(parameter).clone());
            }
            Some("query") if full || parameter["required"] == true => {
                let value = parameter.get("example").cloned().unwrap_or_else(|| match parameter["name"].as_str() {
                    Some("scanCode") => json!(BARCODE),
                    Some("alcCode") => json!("0123456789012345678"),
                    Some("page") => json!(0),
                    Some("size") => json!(10),
                    _ => instance(parameter, full),
                });
                let value = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
                query.push(format!("{}={value}", parameter["name"].as_str().unwrap_or_default()));
            }
            Some("header") if parameter["name"] == "Authorization" => {
                server = parameter["pattern"].as_str().is_some_and(|pattern| pattern.contains("Basic"));
            }
            _ => {}
        }
    }
    let path = operation.path.replace("{storeUuid}", UUID);
    let target = if query.is_empty() { path.clone() } else { format!("{path}?{}", query.join("&")) };
    let registers = matches!(path.as_str(), "/api/v1/user/create" | "/api/v1/user/verify");
    let authorization = if server || registers { "Bearer server".to_owned() } else { world.user() };
    if path == "/api/v1/user/verify"
        && let Some(body) = &body
    {
        // An account to log into with the credentials the request carries.
        let account = json!({"login": body["username"], "password": body["password"]});
        world.ok("POST", "/partner/v1/accounts", "Bearer partner", account);
    }
    if path.contains("/products") || path == "/api/v1/commodities" {
        // The store becomes the user's, and holds a product the look-up finds.
        world.call("GET", &format!("/api/v1/inventories/stores/{UUID}/products"), &authorization, None);
        let scan = query.iter().find_map(|pair| pair.strip_prefix("scanCode=")).unwrap_or(BARCODE);
        let alc: Vec<&str> = query.iter().filter_map(|pair| pair.strip_prefix("alcCode=")).collect();
        let product = json!({"uuid": "01ba18b6-8707-4f47-8d9c-4db058054cb2", "group": false, "name": "Cider",
            "type": "NORMAL", "allowToSell": true, "measureName": "шт", "price": 123.12, "quantity": 12,
            "tax": "VAT_20", "barCodes": [scan], "alcoCodes": alc});
        world.ok("PUT", &format!("/partner/v1/stores/{UUID}/products"), "Bearer partner", json!([product]));
    }
    let response = world.call(&operation.method, &target, &authorization, body.as_ref());
    if !(200..300).contains(&response.status) {
        return Err(format!("{name}: {} for {}", text(&response), body.map(|b| b.to_string()).unwrap_or_default()));
    }
    // Some examples break their own schema (`product.uuid`'s is no uuid4): such a request must be
    // taken, and what it is answered is not the definitions' to say.
    let obeys = match (&body, &body_schema) {
        (Some(body), Some(schema)) => valid(schema, body),
        _ => true,
    };
    if let Some(schema) = operation.answer.as_ref().filter(|_| obeys) {
        let validator =
            validator(schema).map_err(|err| format!("{name}: the answer's schema does not compile: {err}"))?;
        let answer = response.body_json();
        let errors: Vec<String> =
            validator.iter_errors(&answer).map(|err| format!("{} at {}", err, err.instance_path())).collect();
        if !errors.is_empty() {
            return Err(format!("{name}: the answer {answer} does not validate: {errors:?}"));
        }
        return Ok(true);
    }
    Ok(false)
}

#[test]
fn every_request_the_definitions_describe_is_accepted_and_answered_as_defined() {
    let definitions = Definitions::load();
    let operations = operations(&definitions);
    assert!(operations.len() >= 20, "{} operations found", operations.len());
    let outcomes: Vec<Result<bool, String>> =
        operations.iter().flat_map(|operation| [check(operation, true), check(operation, false)]).collect();
    let failures: Vec<&String> = outcomes.iter().filter_map(|outcome| outcome.as_ref().err()).collect();
    assert!(failures.is_empty(), "{} of {} requests:\n{failures:#?}", failures.len(), outcomes.len());
    let answers_checked = outcomes.iter().filter(|outcome| matches!(outcome, Ok(true))).count();
    assert!(answers_checked >= 20, "only {answers_checked} answers had a schema to check");
}

#[test]
fn the_converted_schemas_reject_what_the_definitions_forbid() {
    // A check that can fail: the validator sees the definitions' constraints.
    let definitions = Definitions::load();
    let create = operations(&definitions)
        .into_iter()
        .find(|operation| operation.source == "2017" && operation.path == "/api/v1/user/create")
        .expect("user/create is defined");
    let schema = json_schema(create.answer.as_ref().expect("an answer schema"));
    let validator = jsonschema::draft4::new(&schema).expect("compiles");
    assert!(validator.is_valid(&json!({"userUuid": USER, "token": "t"})));
    assert!(!validator.is_valid(&json!({"userId": USER, "token": "t"})), "userUuid is required by 2017");
    assert!(!validator.is_valid(&json!({"userUuid": USER, "token": "t".repeat(129)})), "token at most 128");
}
