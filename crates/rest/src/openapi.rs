//! The OpenAPI 3.1 document of the REST routes, generated from the same
//! descriptors and rules the gateway serves: one operation per binding,
//! path and query parameters, the JSON body, and a schema per message in
//! the proto3 JSON mapping (camelCase properties, 64-bit integers as
//! strings, enums by name, well-known types in their JSON forms, no
//! properties beyond the message's own). Every operation's errors are a
//! `google.rpc.Status`.

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::{Binding, BodyField};

/// The schema of a field's value (one element for a repeated field).
fn scalar_schema(field: &FieldDescriptor, refs: &mut BTreeMap<String, MessageDescriptor>) -> Value {
    match field.kind() {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"})
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"})
        }
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(e) => {
            let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
            json!({"type": "string", "enum": names})
        }
        Kind::Message(m) => message_ref(&m, refs),
    }
}

/// A message's schema by reference (well-known types inline).
fn message_ref(
    message: &MessageDescriptor,
    refs: &mut BTreeMap<String, MessageDescriptor>,
) -> Value {
    match message.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})
        }
        "google.protobuf.FieldMask" => json!({"type": "string"}),
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array"}),
        "google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
        "google.protobuf.Any" => {
            json!({"type": "object", "properties": {"@type": {"type": "string"}}})
        }
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => json!({"type": "string"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!({"type": "number"}),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({"type": "integer"}),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => json!({"type": "string"}),
        name => {
            refs.entry(name.to_owned())
                .or_insert_with(|| message.clone());
            json!({"$ref": format!("#/components/schemas/{name}")})
        }
    }
}

fn field_schema(field: &FieldDescriptor, refs: &mut BTreeMap<String, MessageDescriptor>) -> Value {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return json!({"type": "object"});
        };
        let value = entry
            .get_field_by_name("value")
            .map(|v| scalar_schema(&v, refs))
            .unwrap_or_else(|| json!({}));
        return json!({"type": "object", "additionalProperties": value});
    }
    let one = scalar_schema(field, refs);
    if field.is_list() {
        json!({"type": "array", "items": one})
    } else {
        one
    }
}

/// A message's object schema, leaving out `skip` (fields in the path).
fn message_schema(
    message: &MessageDescriptor,
    skip: &[String],
    refs: &mut BTreeMap<String, MessageDescriptor>,
) -> Value {
    let mut properties = Map::new();
    for field in message.fields() {
        if skip.iter().any(|s| s == field.name()) {
            continue;
        }
        properties.insert(field.json_name().to_owned(), field_schema(&field, refs));
    }
    json!({"type": "object", "properties": properties, "additionalProperties": false})
}

/// The query parameters of `message`'s fields (nested by dots), leaving
/// out `skip` (proto field paths in the path or the body), at most `depth`
/// levels deep. `prefix` is (JSON, proto) names of the enclosing fields.
fn query_parameters(
    message: &MessageDescriptor,
    prefix: (&str, &str),
    skip: &[String],
    depth: usize,
    out: &mut Vec<Value>,
    refs: &mut BTreeMap<String, MessageDescriptor>,
) {
    for field in message.fields() {
        let name = format!("{}{}", prefix.0, field.json_name());
        let proto_path = format!("{}{}", prefix.1, field.name());
        if skip.contains(&proto_path) || field.is_map() {
            continue;
        }
        match field.kind() {
            Kind::Message(inner) if !crate::is_scalar_well_known(inner.full_name()) => {
                if depth > 0 && !field.is_list() {
                    let nested = (format!("{name}."), format!("{proto_path}."));
                    query_parameters(&inner, (&nested.0, &nested.1), skip, depth - 1, out, refs);
                }
            }
            _ => {
                let schema = field_schema(&field, refs);
                let mut parameter =
                    json!({"name": name, "in": "query", "required": false, "schema": schema});
                if field.is_list() {
                    parameter["explode"] = json!(true);
                    parameter["style"] = json!("form");
                }
                out.push(parameter);
            }
        }
    }
}

/// The document for `bindings`, titled `title`.
pub fn document(bindings: &[Binding], title: &str, version: &str) -> Value {
    let mut refs = BTreeMap::new();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for binding in bindings {
        let method = &binding.method;
        let input = method.input();
        let path_fields: Vec<String> = binding.template.fields().map(str::to_owned).collect();
        let mut parameters = Vec::new();
        for field in &path_fields {
            let schema = crate::field_path(&input, field)
                .ok()
                .and_then(|p| p.last().map(|f| field_schema(f, &mut refs)))
                .unwrap_or_else(|| json!({"type": "string"}));
            // A path segment is never empty.
            let schema = match schema {
                Value::Object(mut s)
                    if s.get("type") == Some(&json!("string")) && !s.contains_key("pattern") =>
                {
                    s.insert("minLength".into(), json!(1));
                    s.insert("pattern".into(), json!("^[^/]+$"));
                    Value::Object(s)
                }
                other => other,
            };
            parameters
                .push(json!({"name": crate::template::openapi_name(field), "in": "path", "required": true, "schema": schema}));
        }
        let mut operation = json!({
            "operationId": format!("{}_{}", method.parent_service().name(), method.name()),
            "tags": [method.parent_service().full_name()],
            "summary": format!("{} ({})", method.name(), method.full_name()),
            "responses": {
                "default": {
                    "description": "An error: the HTTP status of its gRPC code, and a google.rpc.Status",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}},
                },
            },
        });
        match &binding.body {
            BodyField::None => {
                query_parameters(
                    &input,
                    ("", ""),
                    &path_fields,
                    2,
                    &mut parameters,
                    &mut refs,
                );
            }
            BodyField::All => {
                let schema = message_schema(&input, &path_fields, &mut refs);
                operation["requestBody"] =
                    json!({"required": true, "content": {"application/json": {"schema": schema}}});
            }
            BodyField::Field(field) => {
                let mut skip = path_fields.clone();
                skip.push(field.name().to_owned());
                query_parameters(&input, ("", ""), &skip, 2, &mut parameters, &mut refs);
                let schema = match field.kind() {
                    Kind::Message(m) if !field.is_list() => {
                        // Fields bound by the path (`experiment.key`) come from there.
                        let nested: Vec<String> = path_fields
                            .iter()
                            .filter_map(|p| {
                                p.strip_prefix(&format!("{}.", field.name()))
                                    .map(str::to_owned)
                            })
                            .collect();
                        message_schema(&m, &nested, &mut refs)
                    }
                    _ => field_schema(field, &mut refs),
                };
                operation["requestBody"] =
                    json!({"required": true, "content": {"application/json": {"schema": schema}}});
            }
        }
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        let output = message_ref(&method.output(), &mut refs);
        operation["responses"]["200"] = if method.is_server_streaming() {
            json!({"description": "Newline-delimited JSON: one message per line; a line {\"error\": google.rpc.Status} ends a failed stream", "content": {"application/x-ndjson": {"schema": output}}})
        } else {
            json!({"description": "OK", "content": {"application/json": {"schema": output}}})
        };
        paths
            .entry(binding.template.openapi_path())
            .or_default()
            .insert(binding.verb.as_str().to_lowercase(), operation);
    }
    let mut schemas = Map::new();
    schemas.insert(
        "google.rpc.Status".into(),
        json!({
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "integer", "description": "The gRPC status code"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object", "properties": {"@type": {"type": "string"}}}},
            },
        }),
    );
    // Schemas of every message reached, and the messages they reach.
    let mut done = std::collections::BTreeSet::new();
    while let Some((name, message)) = refs
        .iter()
        .find(|(n, _)| !done.contains(*n))
        .map(|(n, m)| (n.clone(), m.clone()))
    {
        done.insert(name.clone());
        let schema = message_schema(&message, &[], &mut refs);
        schemas.insert(name, schema);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Generated from the protos' google.api.http rules. Authenticate with `Authorization: Bearer <token>` or `x-api-key`. Errors are google.rpc.Status JSON.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
    })
}
