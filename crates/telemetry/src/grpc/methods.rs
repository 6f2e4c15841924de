//! The gRPC methods a process knows, read from its file descriptor sets, so
//! metric labels and span names never come from the request path itself.

use std::collections::HashMap;

use prost::Message as _;

/// The shape of a method's messages (`grpc_type` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl MethodKind {
    /// The `grpc_type` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ClientStream => "client_stream",
            Self::ServerStream => "server_stream",
            Self::BidiStream => "bidi_stream",
        }
    }

    /// True when the client sends a stream of messages.
    pub fn client_streams(self) -> bool {
        matches!(self, Self::ClientStream | Self::BidiStream)
    }
}

/// One known method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// `user.v1.UserService`
    pub service: &'static str,
    /// `GetUser`
    pub method: &'static str,
    /// `user.v1.UserService/GetUser`, the span name.
    pub full_name: &'static str,
    pub kind: MethodKind,
    /// Its position in the table (0: [`MethodInfo::UNKNOWN`]), where the
    /// layers keep its metric series.
    pub index: usize,
}

impl MethodInfo {
    /// What a path that names no known method is counted as.
    pub const UNKNOWN: Self = Self {
        service: "unknown",
        method: "unknown",
        full_name: "unknown",
        kind: MethodKind::Unary,
        index: 0,
    };
}

/// Known methods by request path (`/user.v1.UserService/GetUser`).
#[derive(Debug, Default)]
pub struct GrpcMethods {
    /// A fast seeded hash: the table is fixed at start-up, a lookup hashes
    /// the request's path on every call.
    by_path: HashMap<String, MethodInfo, foldhash::fast::RandomState>,
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

impl GrpcMethods {
    /// Reads every service of the encoded `FileDescriptorSet`s. The names
    /// are leaked: build the table once per process (it is small and lives
    /// as long as the process anyway).
    pub fn from_file_descriptor_sets(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut by_path = HashMap::default();
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(*set)?;
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    let service_name = match package {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    let service_name = leak(service_name);
                    for method in &service.method {
                        let kind = match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => MethodKind::Unary,
                            (true, false) => MethodKind::ClientStream,
                            (false, true) => MethodKind::ServerStream,
                            (true, true) => MethodKind::BidiStream,
                        };
                        let path = format!("/{service_name}/{}", method.name());
                        if by_path.contains_key(&path) {
                            continue; // the same file in two sets
                        }
                        let full_name = leak(path[1..].to_owned());
                        let index = by_path.len() + 1;
                        by_path.insert(
                            path,
                            MethodInfo {
                                service: service_name,
                                method: &full_name[service_name.len() + 1..],
                                full_name,
                                kind,
                                index,
                            },
                        );
                    }
                }
            }
        }
        Ok(Self { by_path })
    }

    /// The method a request path names, or [`MethodInfo::UNKNOWN`].
    pub fn lookup(&self, path: &str) -> MethodInfo {
        self.by_path
            .get(path)
            .copied()
            .unwrap_or(MethodInfo::UNKNOWN)
    }

    /// Every known method.
    pub fn iter(&self) -> impl Iterator<Item = &MethodInfo> {
        self.by_path.values()
    }

    /// How many methods are known.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// True when no method is known.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}
