//! REST/JSON access to the gRPC services, from their protos.
//!
//! Every method with a `google.api.http` rule gets an HTTP route: its path
//! template binds request fields, the rule's `body` names the field the
//! JSON body fills (`*`: every field not in the path), and the remaining
//! fields may be given as query parameters (`?page_size=2&page_token=…`,
//! nested by dots, repeated by repeating the key). The request is built as
//! proto3 JSON, checked against the request message (unknown fields and
//! wrong types are 400), encoded, and sent as a gRPC call through the same
//! in-process service stack the gRPC port serves — so authentication
//! (`Authorization: Bearer`, `x-api-key`), authorization, rate limits, load
//! shedding, deadlines (`grpc-timeout`), metrics and trace/request ids are
//! the gRPC path's own.
//!
//! Answers are canonical proto3 JSON (camelCase names, enums by name, 64-bit
//! integers as strings, Timestamp/Duration/FieldMask/Struct in their JSON
//! forms), with fields at their default values included. An error is the
//! HTTP status of its gRPC code ([`http_status`]) with a `google.rpc.Status`
//! body: `{"code": 3, "message": "…", "details": [{"@type":
//! "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": […]}]}`.
//! A server-streaming method answers newline-delimited JSON
//! (`application/x-ndjson`), one message per line; an error after the first
//! message ends the stream with a line `{"error": <google.rpc.Status>}`.

pub mod openapi;
mod template;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Body as AxumBody,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    SerializeOptions, Value as ProtoValue,
};
use serde_json::{Map, Value, json};
use tonic::{Code, Status, body::Body as GrpcBody};
use tower::{ServiceExt, util::BoxCloneService};

pub use prost_reflect::DescriptorPool;
pub use template::{Template, TemplateError};

/// The gRPC stack a gateway calls: what the gRPC port serves, layers and all.
pub type GrpcService =
    BoxCloneService<http::Request<GrpcBody>, http::Response<GrpcBody>, Infallible>;

/// Largest JSON body accepted (413 beyond), unless set otherwise.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Headers passed to the gRPC call as metadata.
const FORWARDED: [&str; 8] = [
    "authorization",
    "x-api-key",
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-ab-variant",
    "x-canary",
    "grpc-timeout",
];

/// What the JSON body of a rule fills.
#[derive(Debug, Clone)]
enum BodyField {
    None,
    All,
    Field(FieldDescriptor),
}

/// One HTTP route of one method.
#[derive(Debug, Clone)]
pub struct Binding {
    pub verb: Method,
    pub template: Template,
    body: BodyField,
    pub method: MethodDescriptor,
    /// `/user.v1.UserService/GetUser`.
    pub grpc_path: String,
}

impl Binding {
    /// The rule's `body`: None, `*`, or a field name.
    pub fn body(&self) -> Option<String> {
        match &self.body {
            BodyField::None => None,
            BodyField::All => Some("*".into()),
            BodyField::Field(f) => Some(f.name().to_owned()),
        }
    }
}

/// A `google.api.http` rule that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{method}: {source}")]
    Template {
        method: String,
        source: TemplateError,
    },
    #[error("{method}: {problem}")]
    Rule { method: String, problem: String },
}

fn rule_field<'a>(
    rule: &'a DynamicMessage,
    name: &str,
) -> Option<std::borrow::Cow<'a, ProtoValue>> {
    rule.get_field_by_name(name)
}

fn rule_str(rule: &DynamicMessage, name: &str) -> String {
    rule_field(rule, name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A field of `message` by its proto name or its JSON name.
fn field_named(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
}

/// The descriptor of a (possibly nested) field path, if every step but the
/// last is a singular message.
fn field_path(message: &MessageDescriptor, path: &str) -> Result<Vec<FieldDescriptor>, String> {
    let mut fields = Vec::new();
    let mut current = message.clone();
    let steps: Vec<&str> = path.split('.').collect();
    for (i, step) in steps.iter().enumerate() {
        let field = field_named(&current, step)
            .ok_or_else(|| format!("{} has no field {step:?}", current.full_name()))?;
        if i + 1 < steps.len() {
            match field.kind() {
                Kind::Message(inner) if !field.is_list() && !field.is_map() => current = inner,
                _ => return Err(format!("{path}: {step} is not a message")),
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

fn bindings_of(
    pool: &DescriptorPool,
    method: &MethodDescriptor,
) -> Result<Vec<Binding>, RuleError> {
    let Some(extension) = pool.get_extension_by_name("google.api.http") else {
        return Ok(Vec::new());
    };
    let options = method.options();
    if !options.has_extension(&extension) {
        return Ok(Vec::new());
    }
    let rule = match options.get_extension(&extension).as_ref() {
        ProtoValue::Message(rule) => rule.clone(),
        _ => return Ok(Vec::new()),
    };
    let mut rules = vec![rule.clone()];
    if let Some(more) = rule_field(&rule, "additional_bindings")
        && let Some(list) = more.as_list()
    {
        rules.extend(list.iter().filter_map(|v| v.as_message().cloned()));
    }
    let name = method.full_name().to_owned();
    let problem = |problem: String| RuleError::Rule {
        method: name.clone(),
        problem,
    };
    let mut bindings = Vec::new();
    for rule in rules {
        let (verb, path) = ["get", "put", "post", "delete", "patch"]
            .iter()
            .map(|v| (*v, rule_str(&rule, v)))
            .find(|(_, path)| !path.is_empty())
            .map(|(v, path)| (Method::from_bytes(v.to_uppercase().as_bytes()), path))
            .or_else(|| {
                let custom = rule_field(&rule, "custom")?.as_message()?.clone();
                let kind = rule_str(&custom, "kind");
                Some((
                    Method::from_bytes(kind.as_bytes()),
                    rule_str(&custom, "path"),
                ))
            })
            .ok_or_else(|| problem("the rule has no pattern".into()))?;
        let verb = verb.map_err(|e| problem(format!("bad HTTP method: {e}")))?;
        let template = Template::parse(&path).map_err(|source| RuleError::Template {
            method: name.clone(),
            source,
        })?;
        let input = method.input();
        for field in template.fields() {
            let path = field_path(&input, field).map_err(problem)?;
            if path.last().is_some_and(|f| f.is_list() || f.is_map()) {
                return Err(problem(format!(
                    "{field} is repeated and cannot be in the path"
                )));
            }
        }
        let body = match rule_str(&rule, "body").as_str() {
            "" => BodyField::None,
            "*" => BodyField::All,
            field => BodyField::Field(
                input
                    .get_field_by_name(field)
                    .ok_or_else(|| problem(format!("body names no field {field:?}")))?,
            ),
        };
        if method.is_client_streaming() {
            return Err(problem("client streaming has no REST mapping".into()));
        }
        bindings.push(Binding {
            verb,
            template,
            body,
            grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
            method: method.clone(),
        });
    }
    Ok(bindings)
}

/// The REST side of a server: its routes and the gRPC stack they call.
#[derive(Clone)]
pub struct Gateway {
    bindings: Arc<[Binding]>,
    pool: DescriptorPool,
    /// Cloned per call (the stack's limits are shared by its clones).
    service: Arc<Mutex<GrpcService>>,
    body_limit: usize,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.bindings.len())
            .finish_non_exhaustive()
    }
}

/// Every HTTP route of the methods of `services` (full names) in `pool`.
pub fn bindings(pool: &DescriptorPool, services: &[&str]) -> Result<Vec<Binding>, RuleError> {
    let mut all = Vec::new();
    for service in pool
        .services()
        .filter(|s| services.contains(&s.full_name()))
    {
        for method in service.methods() {
            all.extend(bindings_of(pool, &method)?);
        }
    }
    // Custom methods first (`/v1/payments/{id}:refund` before
    // `/v1/payments/{id}`, whose variable would take `p1:refund`), then
    // more literal segments first.
    all.sort_by_key(|b| {
        std::cmp::Reverse((b.template.verb().is_some(), b.template.literal_prefix_len()))
    });
    Ok(all)
}

impl Gateway {
    /// A gateway for the methods of `services` (full names) in `pool`,
    /// calling `service`.
    pub fn new(
        pool: DescriptorPool,
        services: &[&str],
        service: GrpcService,
    ) -> Result<Self, RuleError> {
        Ok(Self {
            bindings: bindings(&pool, services)?.into(),
            pool,
            service: Arc::new(Mutex::new(service)),
            body_limit: DEFAULT_BODY_LIMIT,
        })
    }

    /// Refuses bodies larger than `bytes` with 413.
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// The OpenAPI 3.1 document of this gateway's routes.
    pub fn openapi(&self) -> Value {
        openapi::document(&self.bindings, "mercato", env!("CARGO_PKG_VERSION"))
    }

    /// The routes as an axum router, and the document at `/openapi.json`.
    pub fn router(self) -> Router {
        let document = Arc::new(self.openapi());
        Router::new()
            .route(
                "/openapi.json",
                axum::routing::get(move || {
                    let document = document.clone();
                    async move { axum::Json((*document).clone()) }
                }),
            )
            .fallback(handle)
            .with_state(self)
    }

    fn grpc(&self) -> GrpcService {
        self.service
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The HTTP status of a gRPC code (google.rpc.Code's mapping; AIP-193).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `status` as google.rpc.Status JSON, its details decoded by `pool`.
fn status_json(pool: &DescriptorPool, status: &Status) -> Value {
    let mut body =
        json!({"code": status.code() as i32, "message": status.message(), "details": []});
    if !status.details().is_empty()
        && let Some(descriptor) = pool.get_message_by_name("google.rpc.Status")
        && let Ok(decoded) = DynamicMessage::decode(descriptor, status.details())
        && let Ok(Value::Object(mut decoded)) = serde_json::to_value(&decoded)
        && let Some(details) = decoded.remove("details")
    {
        body["details"] = details;
    }
    body
}

fn error_response(pool: &DescriptorPool, status: &Status) -> Response {
    status_response(pool, http_status(status.code()), status)
}

/// `status` as the body of an answer with HTTP status `http`.
fn status_response(pool: &DescriptorPool, http: StatusCode, status: &Status) -> Response {
    let mut response = (http, axum::Json(status_json(pool, status))).into_response();
    if let Some(request_id) = status.metadata().get("x-request-id")
        && let Ok(value) = HeaderValue::from_bytes(request_id.as_bytes())
    {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// Well-known message types whose JSON form is one string, number or
/// bool, so that they can be given in a path or a query.
pub(crate) fn is_scalar_well_known(full_name: &str) -> bool {
    matches!(
        full_name,
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.BoolValue"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
    )
}

/// A string from the path or the query as the JSON value of `field`.
fn json_scalar(field: &FieldDescriptor, raw: &str) -> Result<Value, String> {
    let boolean = match field.kind() {
        Kind::Bool => true,
        Kind::Message(message) if message.full_name() == "google.protobuf.BoolValue" => true,
        Kind::Message(message) if !is_scalar_well_known(message.full_name()) => {
            return Err(format!(
                "{}: a {} is not given in the path or the query",
                field.name(),
                message.full_name()
            ));
        }
        _ => false,
    };
    if !boolean {
        // Numbers as strings are valid proto3 JSON; enums by name; the
        // scalar well-known types in their string forms.
        return Ok(Value::String(raw.to_owned()));
    }
    match raw {
        "true" => Ok(Value::Bool(true)),
        "false" => Ok(Value::Bool(false)),
        _ => Err(format!("{}: {raw:?} is not true or false", field.name())),
    }
}

/// Sets the field at `path` (dotted) in the JSON object `target` from a
/// string; a repeated field collects every value.
fn set_from_text(
    target: &mut Map<String, Value>,
    message: &MessageDescriptor,
    path: &str,
    raw: &str,
) -> Result<(), String> {
    let fields = field_path(message, path)?;
    let Some((last, parents)) = fields.split_last() else {
        return Err(format!("empty field name in {path:?}"));
    };
    let mut object = target;
    for parent in parents {
        let entry = object
            .entry(parent.json_name().to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        object = entry
            .as_object_mut()
            .ok_or_else(|| format!("{path}: {} is given twice", parent.name()))?;
    }
    if last.is_map() {
        return Err(format!("{path}: a map is given in the body only"));
    }
    let value = json_scalar(last, raw)?;
    if last.is_list() {
        match object
            .entry(last.json_name().to_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(value),
            _ => return Err(format!("{path}: given twice")),
        }
    } else {
        object.insert(last.json_name().to_owned(), value);
    }
    Ok(())
}

/// Minimal application/x-www-form-urlencoded decoding of one component.
fn form_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The request message of `binding` from the path's variables, the query
/// and the body.
fn request_message(
    binding: &Binding,
    variables: Vec<(String, String)>,
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, Status> {
    let input = binding.method.input();
    let body_json: Option<Value> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(
            serde_json::from_slice(body)
                .map_err(|e| invalid(format!("the body is not JSON: {e}")))?,
        )
    };
    let mut request = Map::new();
    match (&binding.body, body_json) {
        (BodyField::None, Some(_)) => {
            return Err(invalid(format!(
                "{} {} takes no body",
                binding.verb,
                binding.template.openapi_path()
            )));
        }
        (_, None) => {}
        (BodyField::All, Some(Value::Object(fields))) => request = fields,
        (BodyField::All, Some(_)) => return Err(invalid("the body must be a JSON object")),
        (BodyField::Field(field), Some(value)) => {
            request.insert(field.json_name().to_owned(), value);
        }
    }
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        if matches!(binding.body, BodyField::All) {
            return Err(invalid(
                "this method takes its fields in the body, not as query parameters",
            ));
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(key), Some(value)) = (form_decode(key), form_decode(value)) else {
                return Err(invalid(format!(
                    "query parameter {pair:?} is not URL-encoded"
                )));
            };
            if let BodyField::Field(field) = &binding.body
                && key
                    .split('.')
                    .next()
                    .is_some_and(|k| field_named(&input, k).as_ref() == Some(field))
            {
                return Err(invalid(format!("{key} is given in the body")));
            }
            set_from_text(&mut request, &input, &key, &value)
                .map_err(|e| invalid(format!("query parameter {key}: {e}")))?;
        }
    }
    // The path's values win over the body's.
    for (field, value) in variables {
        set_from_text(&mut request, &input, &field, &value)
            .map_err(|e| invalid(format!("path {field}: {e}")))?;
    }
    DynamicMessage::deserialize_with_options(
        input,
        Value::Object(request),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| {
        invalid(format!(
            "the request does not fit {}: {e}",
            binding.method.input().full_name()
        ))
    })
}

/// The gRPC request of `message`, with the caller's metadata.
fn grpc_request(
    binding: &Binding,
    headers: &HeaderMap,
    message: &DynamicMessage,
) -> Result<http::Request<GrpcBody>, Status> {
    let encoded = message.encode_to_vec();
    let length = u32::try_from(encoded.len())
        .map_err(|_| Status::resource_exhausted("request too large"))?;
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(length);
    frame.extend_from_slice(&encoded);
    let mut request = http::Request::builder()
        .method(Method::POST)
        .uri(binding.grpc_path.as_str())
        .version(http::Version::HTTP_2)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers");
    for name in FORWARDED {
        for value in headers.get_all(name) {
            request = request.header(name, value);
        }
    }
    request
        .body(GrpcBody::new(http_body_util::Full::new(frame.freeze())))
        .map_err(|e| Status::internal(e.to_string()))
}

/// Splits complete gRPC frames off `buffer`.
fn next_frame(buffer: &mut BytesMut) -> Result<Option<Bytes>, Status> {
    if buffer.len() < 5 {
        return Ok(None);
    }
    if buffer[0] != 0 {
        return Err(Status::internal("compressed gRPC frame"));
    }
    let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < 5 + length {
        return Ok(None);
    }
    buffer.advance(5);
    Ok(Some(buffer.split_to(length).freeze()))
}

fn json_of(message: &DynamicMessage) -> Result<Vec<u8>, Status> {
    let mut out = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(
            &mut out,
            &SerializeOptions::new().skip_default_fields(false),
        )
        .map_err(|e| Status::internal(format!("cannot write the answer as JSON: {e}")))?;
    Ok(out.into_inner())
}

async fn handle(State(gateway): State<Gateway>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let mut allowed: Vec<&str> = Vec::new();
    let mut found = None;
    for binding in gateway.bindings.iter() {
        if let Some(variables) = binding.template.matches(path) {
            if binding.verb == parts.method {
                found = Some((binding, variables));
                break;
            }
            if !allowed.contains(&binding.verb.as_str()) {
                allowed.push(binding.verb.as_str());
            }
        }
    }
    let Some((binding, variables)) = found else {
        if !allowed.is_empty() {
            let status =
                Status::unimplemented(format!("{} is not allowed on {path}", parts.method));
            let mut response =
                status_response(&gateway.pool, StatusCode::METHOD_NOT_ALLOWED, &status);
            if let Ok(allow) = HeaderValue::from_str(&allowed.join(", ")) {
                response.headers_mut().insert(header::ALLOW, allow);
            }
            return response;
        }
        let status = Status::not_found(format!("no REST route for {} {path}", parts.method));
        return error_response(&gateway.pool, &status);
    };
    let bytes = match axum::body::to_bytes(body, gateway.body_limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let status = Status::resource_exhausted(format!(
                "the body is larger than {} bytes",
                gateway.body_limit
            ));
            let mut response =
                status_response(&gateway.pool, StatusCode::PAYLOAD_TOO_LARGE, &status);
            // The rest of the body is not read: the connection closes, and
            // says so, so the client does not reuse it.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let message = match request_message(binding, variables, parts.uri.query(), &bytes) {
        Ok(message) => message,
        Err(status) => return error_response(&gateway.pool, &status),
    };
    let mut call = match grpc_request(binding, &parts.headers, &message) {
        Ok(call) => call,
        Err(status) => return error_response(&gateway.pool, &status),
    };
    // The client's address, where the gRPC server's layers look for it
    // (served with `into_make_service_with_connect_info::<SocketAddr>`).
    if let Some(axum::extract::ConnectInfo(remote)) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        call.extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(*remote),
            });
    }
    let Ok(response) = gateway.grpc().oneshot(call).await;
    let (head, body) = response.into_parts();
    if let Some(status) = Status::from_header_map(&head.headers)
        && status.code() != Code::Ok
    {
        return error_response(&gateway.pool, &status);
    }
    let output = binding.method.output();
    if binding.method.is_server_streaming() {
        return stream_response(gateway.pool.clone(), output, body);
    }
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(e) => return error_response(&gateway.pool, &Status::unavailable(e.to_string())),
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    if let Some(status) = Status::from_header_map(&trailers)
        && status.code() != Code::Ok
    {
        return error_response(&gateway.pool, &status);
    }
    let mut buffer = BytesMut::from(collected.to_bytes().as_ref());
    let answer = next_frame(&mut buffer).and_then(|frame| {
        let frame = frame.ok_or_else(|| Status::internal("the call answered no message"))?;
        let message = DynamicMessage::decode(output, frame)
            .map_err(|e| Status::internal(format!("undecodable answer: {e}")))?;
        json_of(&message)
    });
    match answer {
        Ok(json) => {
            let mut response = ([(header::CONTENT_TYPE, "application/json")], json).into_response();
            copy_ids(&head.headers, response.headers_mut());
            response
        }
        Err(status) => error_response(&gateway.pool, &status),
    }
}

fn copy_ids(from: &HeaderMap, to: &mut HeaderMap) {
    for name in ["x-request-id", "x-ab-variant"] {
        if let Some(value) = from.get(name) {
            to.insert(name, value.clone());
        }
    }
}

/// A server stream as newline-delimited JSON.
fn stream_response(pool: DescriptorPool, output: MessageDescriptor, body: GrpcBody) -> Response {
    let lines = futures_util::stream::unfold(
        (body, BytesMut::new(), false),
        move |(mut body, mut buffer, done)| {
            let (pool, output) = (pool.clone(), output.clone());
            async move {
                if done {
                    return None;
                }
                loop {
                    match next_frame(&mut buffer) {
                        Ok(Some(frame)) => {
                            let line = DynamicMessage::decode(output.clone(), frame)
                                .map_err(|e| Status::internal(format!("undecodable message: {e}")))
                                .and_then(|m| json_of(&m));
                            return Some(match line {
                                Ok(mut line) => {
                                    line.push(b'\n');
                                    (
                                        Ok::<_, Infallible>(Bytes::from(line)),
                                        (body, buffer, false),
                                    )
                                }
                                Err(status) => {
                                    (Ok(error_line(&pool, &status)), (body, buffer, true))
                                }
                            });
                        }
                        Ok(None) => {}
                        Err(status) => {
                            return Some((Ok(error_line(&pool, &status)), (body, buffer, true)));
                        }
                    }
                    match body.frame().await {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => buffer.extend_from_slice(&data),
                            Err(frame) => {
                                let status = frame.trailers_ref().and_then(Status::from_header_map);
                                return match status {
                                    Some(s) if s.code() != Code::Ok => {
                                        Some((Ok(error_line(&pool, &s)), (body, buffer, true)))
                                    }
                                    _ => None,
                                };
                            }
                        },
                        Some(Err(e)) => {
                            let status = Status::unavailable(e.to_string());
                            return Some((Ok(error_line(&pool, &status)), (body, buffer, true)));
                        }
                        None => return None,
                    }
                }
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(AxumBody::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn error_line(pool: &DescriptorPool, status: &Status) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"error": status_json(pool, status)})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// A descriptor pool of `sets` (encoded FileDescriptorSets; a file in
/// several is taken once).
pub fn pool(sets: &[&[u8]]) -> Result<DescriptorPool, prost_reflect::DescriptorError> {
    let mut pool = DescriptorPool::new();
    for set in sets {
        pool.decode_file_descriptor_set(*set)?;
    }
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_has_its_http_status() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn query_components_are_form_decoded() {
        assert_eq!(form_decode("a+b%20c%2Fd").as_deref(), Some("a b c/d"));
        assert_eq!(form_decode("%zz"), None);
    }
}
