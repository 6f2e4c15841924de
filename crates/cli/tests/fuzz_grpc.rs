//! Every RPC of `mercato up` called with made-up requests: for each method
//! the descriptors declare, proptest builds messages of its input type with
//! arbitrary field values (odd strings, boundary numbers, unknown enum
//! values, nested messages) and some raw arbitrary bytes, and sends them
//! with an admin token. Every answer must be a deliberate status — never
//! UNKNOWN, DATA_LOSS or UNIMPLEMENTED, and INTERNAL only for bytes that are
//! not a protobuf message (gRPC's code for an unparsable request) — and the
//! server must still be up, healthy and holding what it held.
//!
//! `FUZZ_GRPC_CASES` sets the cases per method (100 in the test command);
//! a longer run: `FUZZ_GRPC_CASES=2000 cargo test -p mercato-cli --test fuzz_grpc -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{str::FromStr, time::Duration};

use bytes::Bytes;
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, Value,
};
use support::Raw;
use tonic::{Code, transport::Channel};

fn cases() -> u32 {
    std::env::var("FUZZ_GRPC_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
}

/// Strings worth trying in any text field.
const ODD: &[&str] = &[
    "",
    " ",
    "0190b2a4-0000-7000-8000-000000000000",
    "not-a-uuid",
    "pm_approve",
    "pm_decline",
    "pm_error",
    "a@b.c",
    "'; DROP TABLE users; --",
    "\u{0}",
    "é\u{202e}漢字🙂",
    "USD",
    "XXX",
    "users/0190b2a4-0000-7000-8000-000000000000",
    "*",
    "full_name,preferences.timezone",
];

/// Reads values off a fixed pool of entropy (what proptest generated).
struct Entropy<'a>(std::slice::Iter<'a, u64>);

impl Entropy<'_> {
    fn next(&mut self) -> u64 {
        self.0.next().copied().unwrap_or(0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn text(&mut self) -> String {
        match self.below(4) {
            0 => "x".repeat(usize::try_from(self.below(5000)).unwrap()),
            1 => char::from_u32(u32::try_from(self.below(0x11_0000)).unwrap())
                .map_or_else(String::new, |c| c.to_string().repeat(3)),
            _ => ODD[usize::try_from(self.below(ODD.len() as u64)).unwrap()].to_owned(),
        }
    }

    fn int(&mut self) -> i64 {
        match self.below(6) {
            0 => 0,
            1 => -1,
            2 => i64::MAX,
            3 => i64::MIN,
            4 => i64::try_from(self.below(1000)).unwrap(),
            _ => self.next() as i64,
        }
    }
}

fn value(field: &FieldDescriptor, kind: &Kind, e: &mut Entropy<'_>, depth: u32) -> Option<Value> {
    Some(match kind {
        Kind::String => Value::String(e.text()),
        Kind::Bytes => Value::Bytes(Bytes::from(e.text().into_bytes())),
        Kind::Bool => Value::Bool(e.below(2) == 1),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(e.int() as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(e.int()),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(e.int() as u32),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(e.int() as u64),
        Kind::Float => Value::F32([0.0, -1.0, f32::NAN, f32::INFINITY, 1e30][e.below(5) as usize]),
        Kind::Double => {
            Value::F64([0.0, -1.0, f64::NAN, f64::INFINITY, 1e300][e.below(5) as usize])
        }
        // Known values and unknown ones.
        Kind::Enum(_) => Value::EnumNumber(i32::try_from(e.below(6)).unwrap() - 1),
        Kind::Message(message) => {
            if depth > 2 {
                return None;
            }
            Value::Message(message_of(message, e, depth + 1))
        }
    })
    .filter(|_| !field.is_map())
}

fn message_of(descriptor: &MessageDescriptor, e: &mut Entropy<'_>, depth: u32) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    for field in descriptor.fields() {
        if e.below(3) == 0 {
            continue; // left unset
        }
        let kind = field.kind();
        if field.is_list() {
            let items: Vec<Value> = (0..e.below(4))
                .filter_map(|_| value(&field, &kind, e, depth))
                .collect();
            message.set_field(&field, Value::List(items));
        } else if let Some(v) = value(&field, &kind, e, depth) {
            message.set_field(&field, v);
        }
    }
    message
}

/// Either a made-up message of the input type or raw arbitrary bytes.
fn request_bytes(input: &MessageDescriptor, raw: bool, pool: &[u64]) -> Vec<u8> {
    if raw {
        return pool
            .iter()
            .flat_map(|n| n.to_le_bytes())
            .take(pool.len() % 97)
            .collect();
    }
    use prost::Message;
    message_of(input, &mut Entropy(pool.iter()), 0).encode_to_vec()
}

async fn call(
    channel: &Channel,
    method: &MethodDescriptor,
    token: &str,
    body: Vec<u8>,
) -> Result<(), tonic::Status> {
    let mut client = tonic::client::Grpc::new(channel.clone());
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_str(&format!(
        "/{}/{}",
        method.parent_service().full_name(),
        method.name()
    ))
    .unwrap();
    let mut request = tonic::Request::new(Bytes::from(body));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request.set_timeout(Duration::from_secs(15));
    if method.is_server_streaming() {
        let mut stream = client
            .server_streaming(request, path, Raw)
            .await?
            .into_inner();
        // The first message if one comes soon; then the client leaves.
        let _ = tokio::time::timeout(Duration::from_millis(50), stream.message()).await;
        Ok(())
    } else {
        client.unary(request, path, Raw).await.map(drop)
    }
}

fn deliberate(status: &tonic::Status, raw: bool) -> bool {
    match status.code() {
        Code::Unknown | Code::DataLoss | Code::Unimplemented => false,
        Code::Internal => {
            raw && status
                .message()
                .contains("failed to decode Protobuf message")
        }
        _ => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_made_up_requests_with_a_deliberate_status() {
    let mut up = support::up().await;
    let channel = Channel::from_shared(format!("http://{}", up.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let pool = mercato_rest::pool(&[
        mercato_proto::FILE_DESCRIPTOR_SET,
        tonic_types::pb::FILE_DESCRIPTOR_SET,
    ])
    .unwrap();
    // Something stored before, to find intact after.
    let users = pool.get_service_by_name("user.v1.UserService").unwrap();
    let create = users.methods().find(|m| m.name() == "CreateUser").unwrap();
    let mut keep = DynamicMessage::new(create.input());
    keep.set_field_by_name("email", Value::String("kept@example.com".into()));
    keep.set_field_by_name("full_name", Value::String("Kept".into()));
    call(
        &channel,
        &create,
        &up.token,
        prost::Message::encode_to_vec(&keep),
    )
    .await
    .unwrap();

    let runtime = tokio::runtime::Handle::current();
    let methods: Vec<MethodDescriptor> = pool
        .services()
        .filter(|s| {
            ["user.v1", "order.v1", "payment.v1", "experiment.v1"].contains(&s.package_name())
        })
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .collect();
    assert!(methods.len() >= 31, "{} methods", methods.len());
    let mut total = 0u64;
    for method in &methods {
        let (channel, token, method) = (channel.clone(), up.token.clone(), method.clone());
        let runtime = runtime.clone();
        let executions = tokio::task::spawn_blocking(move || {
            let mut runner = TestRunner::new(Config {
                cases: cases(),
                failure_persistence: None,
                ..Config::default()
            });
            let counted = std::sync::atomic::AtomicU64::new(0);
            let result = runner.run(
                &(
                    any::<bool>(),
                    proptest::collection::vec(any::<u64>(), 1..80),
                ),
                |(raw, entropy)| {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let raw = raw && entropy[0] % 4 == 0;
                    let body = request_bytes(&method.input(), raw, &entropy);
                    if let Err(status) = runtime.block_on(call(&channel, &method, &token, body)) {
                        prop_assert!(
                            deliberate(&status, raw),
                            "{}: {status:?}",
                            method.full_name()
                        );
                    }
                    Ok(())
                },
            );
            result.unwrap();
            counted.load(std::sync::atomic::Ordering::Relaxed)
        })
        .await
        .unwrap();
        total += executions;
    }
    println!("fuzz grpc: {total} calls over {} methods", methods.len());

    assert!(
        up.child.try_wait().unwrap().is_none(),
        "the server is still running"
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("still healthy");
    let list = users.methods().find(|m| m.name() == "ListUsers").unwrap();
    let mut client = tonic::client::Grpc::new(channel.clone());
    client.ready().await.unwrap();
    let mut request = tonic::Request::new(Bytes::from(prost::Message::encode_to_vec(
        &DynamicMessage::new(list.input()),
    )));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", up.token).parse().unwrap(),
    );
    let answer = client
        .unary(
            request,
            http::uri::PathAndQuery::from_static("/user.v1.UserService/ListUsers"),
            Raw,
        )
        .await
        .unwrap()
        .into_inner();
    let answer = DynamicMessage::decode(list.output(), answer).unwrap();
    assert!(
        format!("{answer:?}").contains("kept@example.com"),
        "the user stored before is still there"
    );
    up.child.kill().unwrap();
}
