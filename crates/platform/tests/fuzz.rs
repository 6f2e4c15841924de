//! Fuzzing what parses untrusted input, with proptest:
//! - the credential parsers (JWT, API keys): arbitrary text, arbitrary bytes
//!   in JWT shape, arbitrary headers and claims, one-character mutations of
//!   valid credentials — nothing panics, nothing made up verifies, and a
//!   mutated credential never speaks for anyone else;
//! - page tokens: arbitrary text is refused as `page_token` or read as the
//!   cursor it encodes, and issued tokens round-trip;
//! - every request message's decoder (each RPC's input type, checked
//!   against the descriptors so a new RPC cannot be missed): arbitrary bytes
//!   and protobuf-shaped bytes decode or fail cleanly, and what decodes
//!   re-encodes to the same message.
//!
//! (The servers' handlers get arbitrary messages in `crates/cli/tests/fuzz_grpc.rs`,
//! the REST gateway in `scripts/fuzz-rest.sh`.)
//!
//! `FUZZ_CASES` sets the cases per target (10 000 in the test command); a
//! longer run: `FUZZ_CASES=1000000 cargo test --release -p mercato-platform --test fuzz -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use mercato_api::pagination::{decode_token, encode_token};
use mercato_auth::{
    JwtSettings, JwtVerifier,
    api_keys::{ApiKeyVerifier, StaticKeys, issue},
    dev_keys,
};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

/// Runs `check` on `cases()` inputs from `strategy`; prints how many ran.
fn fuzz<S: Strategy>(
    target: &str,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let executions = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&strategy, |input| {
        executions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        check(input)
    });
    println!(
        "fuzz {target}: {} executions",
        executions.load(std::sync::atomic::Ordering::Relaxed)
    );
    result.unwrap();
}

struct Jwt {
    runtime: tokio::runtime::Runtime,
    verifier: JwtVerifier,
    token: String,
}

fn jwt() -> Jwt {
    let dir = tempfile::tempdir().unwrap();
    let pair = dev_keys::generate().unwrap();
    let public = dir.path().join("fuzz.pem");
    std::fs::write(&public, &pair.public_pem).unwrap();
    let verifier = JwtVerifier::new(JwtSettings {
        public_key_files: vec![public],
        ..JwtSettings::default()
    })
    .unwrap();
    let token = dev_keys::mint(
        &pair.private_pem,
        "fuzz",
        "mercato",
        "mercato",
        "u-1",
        &["user".to_owned()],
        600,
    )
    .unwrap();
    Jwt {
        runtime: tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap(),
        verifier,
        token,
    }
}

impl Jwt {
    /// The token of these three segments does not verify.
    fn refuses(&self, header: &[u8], claims: &[u8], signature: &[u8]) -> Result<(), TestCaseError> {
        let token = [header, claims, signature]
            .map(|part| URL_SAFE_NO_PAD.encode(part))
            .join(".");
        prop_assert!(self.runtime.block_on(self.verifier.verify(&token)).is_err());
        Ok(())
    }
}

#[test]
fn jwt_parser_refuses_arbitrary_text() {
    let jwt = jwt();
    fuzz("jwt: arbitrary text", any::<String>(), |text| {
        prop_assert!(jwt.runtime.block_on(jwt.verifier.verify(&text)).is_err());
        Ok(())
    });
}

#[test]
fn jwt_parser_refuses_arbitrary_segments() {
    let jwt = jwt();
    let bytes = || proptest::collection::vec(any::<u8>(), 0..300);
    fuzz(
        "jwt: three base64url segments of arbitrary bytes",
        (bytes(), bytes(), bytes()),
        |(header, claims, signature)| jwt.refuses(&header, &claims, &signature),
    );
}

#[test]
fn jwt_parser_refuses_made_up_headers_and_claims() {
    let jwt = jwt();
    let field = || {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
            prop::sample::select(vec!["none", "HS256", "EdDSA", "RS256", "ES256", "fuzz"])
                .prop_map(serde_json::Value::from),
        ]
    };
    let signature = proptest::collection::vec(any::<u8>(), 0..100);
    fuzz(
        "jwt: made-up header (alg, kid, jku) and claims",
        (
            field(),
            field(),
            field(),
            field(),
            field(),
            field(),
            signature,
        ),
        |(alg, kid, jku, sub, roles, exp, signature)| {
            let header = serde_json::json!({"alg": alg, "kid": kid, "jku": jku, "typ": "JWT"});
            let claims = serde_json::json!({"sub": sub, "roles": roles, "exp": exp,
                "iss": "mercato", "aud": "mercato"});
            jwt.refuses(
                header.to_string().as_bytes(),
                claims.to_string().as_bytes(),
                &signature,
            )
        },
    );
}

#[test]
fn a_mutated_token_never_speaks_for_someone_else() {
    let jwt = jwt();
    let len = jwt.token.len();
    fuzz(
        "jwt: one character of a valid token changed",
        (0..len, any::<char>()),
        |(at, c)| {
            let mut token: Vec<char> = jwt.token.chars().collect();
            token[at] = c;
            let token: String = token.into_iter().collect();
            if let Ok(principal) = jwt.runtime.block_on(jwt.verifier.verify(&token)) {
                // Only a change that decodes to the same bytes can pass.
                prop_assert_eq!(&*principal.subject, "u-1");
                prop_assert_eq!(&*principal.roles, &["user".to_owned()][..]);
            }
            Ok(())
        },
    );
}

#[test]
fn api_key_parser_refuses_arbitrary_and_mutated_keys() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let issued = issue("svc", vec!["service".into()], None, 0).unwrap();
    let verifier = ApiKeyVerifier::new(StaticKeys(HashMap::from([(
        issued.record.id.clone(),
        issued.record.clone(),
    )])));
    fuzz("api key: arbitrary text", any::<String>(), |text| {
        if text != issued.key {
            prop_assert!(runtime.block_on(verifier.verify(&text, 0)).is_err());
        }
        Ok(())
    });
    fuzz(
        "api key: arbitrary text after the mk_ prefix",
        "mk_[0-9A-Za-z_]{0,60}",
        |text| {
            prop_assert!(runtime.block_on(verifier.verify(&text, 0)).is_err());
            Ok(())
        },
    );
    let len = issued.key.len();
    fuzz(
        "api key: one character of a valid key changed",
        (0..len, any::<char>()),
        |(at, c)| {
            let mut key: Vec<char> = issued.key.chars().collect();
            let same = key[at] == c;
            key[at] = c;
            let key: String = key.into_iter().collect();
            prop_assert_eq!(runtime.block_on(verifier.verify(&key, 0)).is_ok(), same);
            Ok(())
        },
    );
}

#[test]
fn page_tokens_are_refused_or_read_never_misread() {
    fuzz("page token: arbitrary text", any::<String>(), |text| {
        match decode_token("users", &text) {
            Ok(None) => prop_assert!(text.is_empty()),
            Ok(Some(cursor)) => {
                // Only a token that says "users:<cursor>" reads as one.
                prop_assert!(!cursor.is_empty());
                prop_assert_eq!(
                    decode_token("users", &encode_token("users", &cursor)),
                    Ok(Some(cursor))
                );
            }
            Err(violation) => prop_assert_eq!(violation.field.as_str(), "page_token"),
        }
        Ok(())
    });
    fuzz(
        "page token: issued tokens, and for another list",
        (
            any::<String>(),
            prop::sample::select(vec!["users", "orders", "api-keys"]),
        ),
        |(cursor, kind)| {
            let token = encode_token(kind, &cursor);
            let read = decode_token("users", &token);
            if kind == "users" && !cursor.is_empty() {
                prop_assert_eq!(read, Ok(Some(cursor)));
            } else {
                prop_assert!(read.is_err());
            }
            Ok(())
        },
    );
}

/// Bytes shaped like protobuf: fields 1–12 with each wire type, values
/// arbitrary (so most decode, into fields of the right or the wrong type).
fn protobuf_shaped() -> impl Strategy<Value = Vec<u8>> {
    let field = (
        1u64..13,
        0u8..4,
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..40),
    );
    proptest::collection::vec(field, 0..12).prop_map(|fields| {
        let mut out = Vec::new();
        for (number, wire, value, bytes) in fields {
            let (wire, payload) = match wire {
                0 => (0, None),
                1 => (1, None),
                2 => (2, Some(bytes)),
                _ => (5, None),
            };
            prost::encoding::encode_varint(number << 3 | wire, &mut out);
            match (wire, payload) {
                (0, _) => prost::encoding::encode_varint(value, &mut out),
                (1, _) => out.extend_from_slice(&value.to_le_bytes()),
                (2, Some(bytes)) => {
                    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
                    out.extend_from_slice(&bytes);
                }
                _ => out.extend_from_slice(&value.to_le_bytes()[..4]),
            }
        }
        out
    })
}

/// Decodes `bytes` as `T`; what decodes must re-encode to itself.
fn decodes_cleanly<T: prost::Message + Default + PartialEq>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    if let Ok(message) = T::decode(bytes) {
        let again = T::decode(message.encode_to_vec().as_slice());
        prop_assert!(again.as_ref() == Ok(&message), "re-encoding changed it");
    }
    Ok(())
}

macro_rules! request_decoders {
    ($($package:literal => $module:path { $($ty:ident),* $(,)? })*) => {
        /// (full name, decoder) of every request message listed.
        fn request_decoders() -> Vec<(String, fn(&[u8]) -> Result<(), TestCaseError>)> {
            let mut all: Vec<(String, fn(&[u8]) -> Result<(), TestCaseError>)> = Vec::new();
            $( {
                use $module as m;
                $( all.push((format!("{}.{}", $package, stringify!($ty)), decodes_cleanly::<m::$ty>)); )*
            } )*
            all
        }
    };
}

request_decoders! {
    "user.v1" => mercato_proto::user::v1 {
        CreateUserRequest, GetUserRequest, UpdateUserRequest, DeleteUserRequest, ListUsersRequest,
        SetUserStatusRequest, StreamUserActivityRequest, CreateApiKeyRequest, ListApiKeysRequest,
        RevokeApiKeyRequest,
    }
    "order.v1" => mercato_proto::order::v1 {
        CreateOrderRequest, GetOrderRequest, ListOrdersRequest, CancelOrderRequest,
        CreateProductRequest, GetProductRequest, ListProductsRequest, AdjustStockRequest,
    }
    "payment.v1" => mercato_proto::payment::v1 {
        ChargeRequest, GetPaymentRequest, ListPaymentsRequest, RefundRequest, VoidChargeRequest,
        ReconcileRequest,
    }
    "experiment.v1" => mercato_proto::experiment::v1 {
        CreateExperimentRequest, GetExperimentRequest, ListExperimentsRequest,
        UpdateExperimentRequest, SetExperimentStatusRequest, GetAssignmentRequest,
        TrackEventRequest, GetResultsRequest,
    }
}

#[test]
fn every_request_decoder_takes_arbitrary_bytes() {
    // Every RPC's input type is in the list: a new RPC fails here first.
    let set = <prost_types::FileDescriptorSet as prost::Message>::decode(
        mercato_proto::FILE_DESCRIPTOR_SET,
    )
    .unwrap();
    let mut inputs: Vec<String> = set
        .file
        .iter()
        .flat_map(|f| &f.service)
        .flat_map(|s| &s.method)
        .filter_map(|m| m.input_type.as_deref())
        .map(|t| t.trim_start_matches('.').to_owned())
        .collect();
    inputs.sort();
    inputs.dedup();
    let decoders = request_decoders();
    let mut listed: Vec<String> = decoders.iter().map(|(name, _)| name.clone()).collect();
    listed.sort();
    assert_eq!(listed, inputs, "every RPC's request type, and only those");

    let count = decoders.len();
    let decoders = std::sync::Arc::new(decoders);
    let all = decoders.clone();
    fuzz(
        "request decoders: arbitrary bytes",
        (0..count, proptest::collection::vec(any::<u8>(), 0..200)),
        move |(which, bytes)| (all[which].1)(&bytes),
    );
    fuzz(
        "request decoders: protobuf-shaped bytes",
        (0..count, protobuf_shaped()),
        move |(which, bytes)| (decoders[which].1)(&bytes),
    );
}
