//! A minimal client for etcd's JSON gateway (`/v3/...` on the plain-HTTP client URL): health,
//! the current revision and compaction. Enough for tests that need a real `410 Gone`; etcdctl
//! is not built.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to etcd at {addr}: {source}; is etcd running (see its log)?")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP to etcd at {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("etcd at {addr} answered {path} with {status}: {body}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: http::StatusCode,
        body: String,
    },
    #[error("etcd at {addr} answered {path} with unexpected JSON: {body}")]
    Decode {
        addr: SocketAddr,
        path: String,
        body: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// etcd's client endpoint (plain HTTP on loopback).
#[derive(Debug, Clone, Copy)]
pub struct Etcd {
    pub addr: SocketAddr,
}

impl Etcd {
    async fn call(&self, method: http::Method, path: &str, body: &str) -> Result<Bytes> {
        let addr = self.addr;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| Error::Connect { addr, source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| Error::Http { addr, source })?;
        let driver = tokio::spawn(conn);
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("static request parts are valid");
        let result = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, bytes))
        }
        .await;
        driver.abort();
        let (status, bytes) = result.map_err(|source| Error::Http { addr, source })?;
        if !status.is_success() {
            return Err(Error::Status {
                addr,
                path: path.to_string(),
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(bytes)
    }

    async fn call_json(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let bytes = self
            .call(http::Method::POST, path, &body.to_string())
            .await?;
        serde_json::from_slice(&bytes).map_err(|_| Error::Decode {
            addr: self.addr,
            path: path.to_string(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// `true` when `GET /health` says etcd is healthy.
    pub async fn healthy(&self) -> bool {
        match self.call(http::Method::GET, "/health", "").await {
            Ok(body) => serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|v| v["health"] == "true"),
            Err(_) => false,
        }
    }

    /// The store's current revision (`header.revision` of a range request).
    ///
    /// # Errors
    /// Connection, HTTP and decoding errors.
    pub async fn revision(&self) -> Result<i64> {
        // key "\0" (base64 "AA==") with limit 1: cheap, and every response carries the header.
        let v = self
            .call_json(
                "/v3/kv/range",
                serde_json::json!({"key": "AA==", "limit": 1, "keys_only": true}),
            )
            .await?;
        revision_of(&v).ok_or_else(|| Error::Decode {
            addr: self.addr,
            path: "/v3/kv/range".into(),
            body: v.to_string(),
        })
    }

    /// Compacts the key-value history up to `revision` (physically, so it is gone on return).
    ///
    /// # Errors
    /// Connection and HTTP errors; etcd refuses a revision that is already compacted or in
    /// the future.
    pub async fn compact(&self, revision: i64) -> Result<()> {
        self.call_json(
            "/v3/kv/compaction",
            serde_json::json!({"revision": revision.to_string(), "physical": true}),
        )
        .await
        .map(drop)
    }
}

/// etcd's gateway renders int64 as a JSON string.
fn revision_of(v: &serde_json::Value) -> Option<i64> {
    match &v["header"]["revision"] {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_read_from_strings_or_numbers() {
        let cases = [
            (serde_json::json!({"header": {"revision": "42"}}), Some(42)),
            (serde_json::json!({"header": {"revision": 7}}), Some(7)),
            (serde_json::json!({"header": {}}), None),
        ];
        for (input, want) in cases {
            assert_eq!(revision_of(&input), want, "{input}");
        }
    }
}
