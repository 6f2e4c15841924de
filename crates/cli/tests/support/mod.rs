//! Starting `mercato up` as a user does, for the CLI's tests.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// A running `mercato up` with its data directory, gRPC and REST addresses,
/// printed banner and admin token.
pub(crate) struct Up {
    pub(crate) child: Child,
    #[allow(dead_code)]
    pub(crate) data: tempfile::TempDir,
    pub(crate) grpc: String,
    #[allow(dead_code)]
    pub(crate) rest: String,
    #[allow(dead_code)]
    pub(crate) banner: Vec<String>,
    pub(crate) token: String,
}

/// Starts `mercato up` on ephemeral ports and reads its banner.
pub(crate) async fn up() -> Up {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mercato"))
        .args([
            "up",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--rest-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // The banner names the real addresses and a grpcurl line to paste.
    let stdout = child.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("grpcurl") && line.contains("CreateUser");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let banner = tokio::time::timeout(Duration::from_secs(30), banner)
        .await
        .unwrap()
        .unwrap();
    let grpc = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("gRPC"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("gRPC line in banner")
        .to_owned();
    let rest = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("REST"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|url| url.strip_suffix("/v1/..."))
        .expect("REST line in banner")
        .to_owned();
    let token = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("export TOKEN="))
        .expect("admin token in banner")
        .to_owned();
    Up {
        child,
        data,
        grpc,
        rest,
        banner,
        token,
    }
}

impl Drop for Up {
    /// Stops the server however the test ends (a failed assertion too): a
    /// test that forgot it left `mercato up` running after the suite.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes in, bytes out: the test encodes with the descriptors itself.
#[allow(dead_code)]
#[derive(Clone, Copy, Default)]
pub(crate) struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
