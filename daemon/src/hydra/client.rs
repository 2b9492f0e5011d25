//! The queue-runner's RPCs as this builder calls them: tonic's generic
//! client with the hand-written [`super::proto`] types (no generated
//! code), the bearer token on every call, mTLS where configured, and the
//! runner's 50 MiB message limit.

use std::time::Duration;

use http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status, Streaming};

use super::proto::*;
use crate::config::HydraConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hydra.endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("reading {0}: {1}")]
    File(std::path::PathBuf, #[source] std::io::Error),
    #[error("cannot connect to the queue-runner at {0}: {1}")]
    Connect(String, String),
    #[error("{rpc}: {status}")]
    Rpc {
        rpc: &'static str,
        #[source]
        status: Status,
    },
    #[error("the token file {0} holds no token")]
    EmptyToken(std::path::PathBuf),
}
pub type Result<T> = std::result::Result<T, Error>;

/// How long a unary call may take.
const UNARY_TIMEOUT: Duration = Duration::from_secs(120);

/// The runner accepts and sends messages up to this size.
pub const MAX_MESSAGE: usize = 50 << 20;

const SERVICE: &str = "/runner.v1.RunnerService/";

/// A connection to one queue-runner; cheap to clone (one HTTP/2
/// connection underneath).
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    token: Option<String>,
}

impl Client {
    /// Connect (TLS when the endpoint is `https://`): HTTP/2 keepalive every
    /// 20 s, also while idle, as the runner may sit behind a proxy that
    /// recycles connections.
    pub async fn connect(cfg: &HydraConfig) -> Result<Client> {
        let bad = |e: &dyn std::fmt::Display| Error::Endpoint(cfg.endpoint.clone(), e.to_string());
        let mut ep = Endpoint::from_shared(cfg.endpoint.clone())
            .map_err(|e| bad(&e))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        if cfg.endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &cfg.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            } else {
                tls = tls.with_native_roots();
            }
            if let (Some(c), Some(k)) = (&cfg.client_cert_file, &cfg.client_key_file) {
                tls = tls.identity(Identity::from_pem(read(c)?, read(k)?));
            }
            if !cfg.domain_name.is_empty() {
                tls = tls.domain_name(cfg.domain_name.clone());
            }
            ep = ep.tls_config(tls).map_err(|e| bad(&e))?;
        }
        let token = match &cfg.token_file {
            Some(f) => {
                let t = String::from_utf8_lossy(&read(f)?).trim().to_owned();
                if t.is_empty() {
                    return Err(Error::EmptyToken(f.clone()));
                }
                Some(t)
            }
            None => None,
        };
        let channel = ep
            .connect()
            .await
            .map_err(|e| Error::Connect(cfg.endpoint.clone(), crate::error::chain(&e)))?;
        Ok(Client { channel, token })
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            if let Ok(v) = format!("Bearer {t}").parse() {
                r.metadata_mut().insert("authorization", v);
            }
        }
        r
    }

    async fn grpc(&self, rpc: &'static str) -> Result<tonic::client::Grpc<Channel>> {
        let mut g = tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        g.ready().await.map_err(|e| Error::Rpc {
            rpc,
            status: Status::unavailable(e.to_string()),
        })?;
        Ok(g)
    }

    async fn unary<Q, A>(&self, rpc: &'static str, msg: Q) -> Result<A>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let mut g = self.grpc(rpc).await?;
        let path = PathAndQuery::from_maybe_shared(format!("{SERVICE}{rpc}")).expect("a path");
        let codec = tonic_prost::ProstCodec::<Q, A>::default();
        // A unary call that hangs (a half-dead connection) must not hold
        // a step forever.
        match tokio::time::timeout(UNARY_TIMEOUT, g.unary(self.request(msg), path, codec)).await {
            Ok(r) => r
                .map(tonic::Response::into_inner)
                .map_err(|status| Error::Rpc { rpc, status }),
            Err(_) => Err(Error::Rpc {
                rpc,
                status: Status::deadline_exceeded(format!("no answer in {UNARY_TIMEOUT:?}")),
            }),
        }
    }

    pub async fn check_version(&self, m: VersionCheckRequest) -> Result<VersionCheckResponse> {
        self.unary("CheckVersion", m).await
    }

    pub async fn step_update(&self, m: StepUpdate) -> Result<Empty> {
        self.unary("BuildStepUpdate", m).await
    }

    pub async fn fetch_requisites(&self, m: StorePaths) -> Result<RequisitesResponse> {
        self.unary("FetchRequisites", m).await
    }

    pub async fn has_path(&self, m: StorePath) -> Result<HasPathResponse> {
        self.unary("HasPath", m).await
    }

    pub async fn complete_build(&self, m: BuildResultInfo) -> Result<Empty> {
        self.unary("CompleteBuild", m).await
    }

    /// The tunnel: `outbound` must never end while joined (the runner
    /// takes the end of the stream as a disconnect).
    pub async fn open_tunnel<S>(&self, outbound: S) -> Result<Streaming<RunnerRequest>>
    where
        S: tokio_stream::Stream<Item = BuilderRequest> + Send + 'static,
    {
        let rpc = "OpenTunnel";
        let mut g = self.grpc(rpc).await?;
        let path = PathAndQuery::from_static("/runner.v1.RunnerService/OpenTunnel");
        let codec = tonic_prost::ProstCodec::<BuilderRequest, RunnerRequest>::default();
        g.streaming(self.request(outbound), path, codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| Error::Rpc { rpc, status })
    }

    /// A client stream (`BuildLog`, `BuildResult`) answered by `Empty` once
    /// it ends.
    pub async fn client_stream<M, S>(&self, rpc: &'static str, stream: S) -> Result<Empty>
    where
        M: prost::Message + Send + Sync + 'static,
        S: tokio_stream::Stream<Item = M> + Send + 'static,
    {
        let mut g = self.grpc(rpc).await?;
        let path = PathAndQuery::from_maybe_shared(format!("{SERVICE}{rpc}")).expect("a path");
        let codec = tonic_prost::ProstCodec::<M, Empty>::default();
        g.client_streaming(self.request(stream), path, codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| Error::Rpc { rpc, status })
    }

    /// `FetchPaths`: a header, then chunks of one zstd frame.
    pub async fn fetch_paths(&self, m: StorePaths) -> Result<Streaming<AddToStoreRequest>> {
        let rpc = "FetchPaths";
        let mut g = self.grpc(rpc).await?;
        let path = PathAndQuery::from_static("/runner.v1.RunnerService/FetchPaths");
        let codec = tonic_prost::ProstCodec::<StorePaths, AddToStoreRequest>::default();
        g.server_streaming(self.request(m), path, codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| Error::Rpc { rpc, status })
    }
}

fn read(p: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| Error::File(p.to_owned(), e))
}
