//! mercato's protobuf contract as Rust: prost messages and tonic clients and
//! servers for `user.v1`, `order.v1`, `payment.v1` and `experiment.v1` (plus `common.v1`
//! shared types), generated at build time from `proto/`.
//!
//! [`FILE_DESCRIPTOR_SET`] is the encoded descriptor set of every file
//! (imports included), for server reflection.

#![allow(unreachable_pub, missing_debug_implementations)]
#![allow(clippy::all, clippy::pedantic)]

/// Encoded `google.protobuf.FileDescriptorSet` of all mercato protos.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mercato_descriptor.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("common.v1");
    }
}

pub mod user {
    pub mod v1 {
        tonic::include_proto!("user.v1");
    }
}

pub mod order {
    pub mod v1 {
        tonic::include_proto!("order.v1");
    }
}

pub mod payment {
    pub mod v1 {
        tonic::include_proto!("payment.v1");
    }
}

pub mod experiment {
    pub mod v1 {
        tonic::include_proto!("experiment.v1");
    }
}
