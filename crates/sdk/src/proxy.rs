//! TCP into a sprite over the `/proxy` WebSocket: one raw connection
//! ([`SpriteHandle::proxy_socket`]), local listeners that forward every connection
//! ([`SpriteHandle::proxy_port`], [`SpriteHandle::proxy_ports`]) and a [`ProxyManager`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{sprite_path, SpriteHandle};
use crate::error::{Error, Result};

/// One local-to-remote port binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// Local port (0 = any free port).
    pub local_port: u16,
    /// Port inside the sprite.
    pub remote_port: u16,
    /// Host inside the sprite (default `localhost`).
    pub remote_host: Option<String>,
}

/// A local listener forwarding to a port in a sprite. Dropping it does not stop it; call
/// [`ProxySession::close`].
pub struct ProxySession {
    /// Bound local address.
    pub local_addr: SocketAddr,
    /// Remote port.
    pub remote_port: u16,
    /// Remote host.
    pub remote_host: String,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

impl ProxySession {
    /// The bound local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and closes the listener (open connections finish).
    pub fn close(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the session is closed.
    pub async fn wait(&self) {
        let mut d = self.done.clone();
        while !*d.borrow() {
            if d.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Several sessions closed and awaited together.
#[derive(Default)]
pub struct ProxyManager {
    sessions: Mutex<Vec<ProxySession>>,
}

impl ProxyManager {
    /// An empty manager.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tracks a session.
    pub fn add_session(&self, s: ProxySession) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s);
    }

    /// Closes every session.
    pub fn close_all(&self) {
        for s in self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            s.close();
        }
    }

    /// Waits until every session is closed.
    pub async fn wait_all(&self) {
        let waits: Vec<watch::Receiver<bool>> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| s.done.clone())
            .collect();
        for mut d in waits {
            while !*d.borrow() {
                if d.changed().await.is_err() {
                    break;
                }
            }
        }
    }
}

/// A TCP connection into a sprite: `AsyncRead + AsyncWrite`.
pub struct ProxyStream(Pin<Box<dyn ProxyIo>>);

impl std::fmt::Debug for ProxyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyStream")
    }
}

trait ProxyIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send> ProxyIo for T {}

impl tokio::io::AsyncRead for ProxyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ProxyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }
}

impl SpriteHandle {
    /// Opens one TCP connection to `host:port` inside the sprite. Against our server this is
    /// a raw `Upgrade: tcp` stream; servers that only speak the WebSocket form get that.
    pub async fn proxy_socket(&self, host: &str, port: u16) -> Result<ProxyStream> {
        let req = self
            .client
            .request(reqwest::Method::GET, &sprite_path(&self.name, "/proxy"))
            .query(&[("host", host.to_string()), ("port", port.to_string())])
            .header("connection", "upgrade")
            .header("upgrade", "tcp");
        let resp = req.send().await.map_err(|e| self.client.connect_err(e))?;
        match resp.status().as_u16() {
            101 => {
                let up = resp.upgrade().await?;
                return Ok(ProxyStream(Box::pin(up)));
            }
            404 | 401 | 503 => {
                let status = resp.status().as_u16();
                let body = resp.bytes().await?;
                let e = Error::from_body(status, &body);
                return Err(match e {
                    Error::Api {
                        status: 503,
                        message,
                        ..
                    } => Error::Api {
                        status: 502,
                        code: Some("proxy_failed".into()),
                        message: format!("cannot reach {host}:{port} in the sprite: {message}"),
                    },
                    other => other,
                });
            }
            _ => {}
        }
        Ok(ProxyStream(Box::pin(
            self.proxy_socket_ws(host, port).await?,
        )))
    }

    /// The WebSocket form of the proxy (spec §5).
    async fn proxy_socket_ws(&self, host: &str, port: u16) -> Result<DuplexStream> {
        let client = &self.client;
        let url = format!(
            "{}{}",
            client.base.replacen("http", "ws", 1),
            sprite_path(&self.name, "/proxy")
        );
        let mut req = url
            .into_client_request()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let auth = format!("Bearer {}", client.token)
            .parse()
            .map_err(|_| Error::InvalidInput("token is not a valid header".into()))?;
        req.headers_mut().insert("authorization", auth);
        let (mut ws, _) = match tokio_tungstenite::connect_async(req).await {
            Ok(x) => x,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                return Err(Error::from_body(
                    status,
                    &resp.body().clone().unwrap_or_default(),
                ));
            }
            Err(e) => return Err(Error::WebSocket(e.to_string())),
        };
        let init = serde_json::json!({ "host": host, "port": port }).to_string();
        ws.send(Message::Text(init.into()))
            .await
            .map_err(|e| Error::WebSocket(e.to_string()))?;
        let status: serde_json::Value = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    break serde_json::from_str(&t)
                        .map_err(|e| Error::Protocol(format!("proxy status: {e}")))?
                }
                Some(Ok(Message::Close(f))) => {
                    return Err(Error::Protocol(format!(
                        "proxy refused: {}",
                        f.map(|f| f.reason.to_string()).unwrap_or_default()
                    )))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(Error::WebSocket(e.to_string())),
                None => return Err(Error::Protocol("proxy closed during the handshake".into())),
            }
        };
        if status["status"] != "connected" {
            return Err(Error::Api {
                status: 502,
                code: Some("proxy_failed".into()),
                message: format!(
                    "cannot reach {host}:{port} in the sprite: {}",
                    status["error"].as_str().unwrap_or("unknown error")
                ),
            });
        }
        let (ours, theirs) = tokio::io::duplex(1024 * 1024);
        tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(theirs);
            let (mut sink, mut stream) = ws.split();
            let up = async {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sink
                                .send(Message::Binary(buf[..n].to_vec().into()))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
                let _ = sink.close().await;
            };
            let down = async {
                while let Some(Ok(m)) = stream.next().await {
                    match m {
                        Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                let _ = wr.shutdown().await;
            };
            tokio::select! {
                _ = up => {}
                _ = down => {}
            }
        });
        Ok(ours)
    }

    /// Listens on `localhost:local_port` and forwards every connection to `remote_port`.
    pub async fn proxy_port(&self, local_port: u16, remote_port: u16) -> Result<ProxySession> {
        self.proxy_mapping(&PortMapping {
            local_port,
            remote_port,
            remote_host: None,
        })
        .await
    }

    /// Several mappings; if one fails, the ones already made are closed and the error returned.
    pub async fn proxy_ports(&self, mappings: &[PortMapping]) -> Result<Vec<ProxySession>> {
        let mut made = Vec::new();
        for m in mappings {
            match self.proxy_mapping(m).await {
                Ok(s) => made.push(s),
                Err(e) => {
                    for s in &made {
                        s.close();
                    }
                    return Err(e);
                }
            }
        }
        Ok(made)
    }

    async fn proxy_mapping(&self, m: &PortMapping) -> Result<ProxySession> {
        let listener = TcpListener::bind(("127.0.0.1", m.local_port))
            .await
            .map_err(|e| {
                Error::InvalidInput(format!("cannot listen on localhost:{}: {e}", m.local_port))
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        let host = m.remote_host.clone().unwrap_or_else(|| "localhost".into());
        let (me, port, h) = (self.clone(), m.remote_port, host.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    acc = listener.accept() => {
                        let Ok((mut local, _)) = acc else { continue };
                        let _ = local.set_nodelay(true);
                        let (me, h) = (me.clone(), h.clone());
                        tokio::spawn(async move {
                            if let Ok(mut remote) = me.proxy_socket(&h, port).await {
                                let _ = tokio::io::copy_bidirectional_with_sizes(&mut local, &mut remote, 256 << 10, 256 << 10).await;
                            }
                        });
                    }
                }
            }
            let _ = done_tx.send(true);
        });
        Ok(ProxySession {
            local_addr,
            remote_port: m.remote_port,
            remote_host: host,
            stop: stop_tx,
            done: done_rx,
        })
    }
}
