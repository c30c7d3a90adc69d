//! The Website logic behind an HTTP hook on loopback, Metacontroller's model: the controller
//! POSTs the request as JSON and reads the response, over one keep-alive connection. The
//! server is a separate process (this binary's `hook-server` command), as a hook would be.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};

/// Serves `POST /reconcile` on `addr` until killed; prints the bound address on stdout.
pub async fn serve(addr: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let response = match body {
                    Ok(body) => match wasmop_pdk::call_json(&body, website_plugin::reconcile) {
                        Ok(out) => Response::new(Full::new(Bytes::from(out))),
                        Err(e) => {
                            let mut r = Response::new(Full::new(Bytes::from(e.to_string())));
                            *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
                            r
                        }
                    },
                    Err(_) => {
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::BAD_REQUEST;
                        r
                    }
                };
                Ok::<_, Infallible>(response)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// A running hook server process; killed on drop.
pub struct Server {
    child: std::process::Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `exe hook-server` and reads the address it bound.
    pub fn start(exe: &Path) -> Result<Self> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(exe)
            .args(["hook-server", "--addr", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} hook-server", exe.display()))?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("piped")?).read_line(&mut line)?;
        let addr = line.trim().parse().context("the hook server's address")?;
        Ok(Server { child, addr })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTP/1.1 connection to the hook.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Client {
            sender,
            host: addr.to_string(),
        })
    }

    /// POSTs `body`; the response body and the round trip's duration.
    pub async fn call(&mut self, body: Bytes) -> Result<(Bytes, Duration)> {
        let started = Instant::now();
        self.sender.ready().await?;
        let req = Request::post("/reconcile")
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let out = resp.into_body().collect().await?.to_bytes();
        let elapsed = started.elapsed();
        if !status.is_success() {
            bail!("hook answered {status}: {}", String::from_utf8_lossy(&out));
        }
        Ok((out, elapsed))
    }
}
