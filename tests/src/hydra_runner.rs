//! A test double of Hydra's queue-runner (`runner.v1.RunnerService`): a
//! real gRPC server on a free port, speaking the wire format with
//! airlock's own message types and answering as the recorded runs in
//! `../shared/fixtures/hydra-queue-runner/` show. It exists because the
//! real queue-runner cannot be installed here from a package registry.
//!
//! Everything a builder sends is kept, in order, as `(rpc, message as
//! canonical JSON)`, so a test can compare it field by field with the
//! recorded builder messages. The test pushes steps and aborts onto the
//! tunnel, or drops it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use airlock::hydra::frame;
use airlock::hydra::proto;
use airlock::hydra::proto::*;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;
type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;
/// A handler of the double: request in, answer (or stream) out.
type Handler<I, O> = Arc<dyn Fn(I) -> BoxFuture<Result<O, Status>> + Send + Sync>;

/// The recorded messages of one run, by `seq`.
pub fn recording(name: &str) -> Vec<serde_json::Value> {
    let path = format!(
        "{}/../../shared/fixtures/hydra-queue-runner/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A recorded message decoded with airlock's types.
pub fn recorded<M: prost::Message + Default>(lines: &[serde_json::Value], seq: u64) -> M {
    let l = lines.iter().find(|l| l["seq"] == seq).expect("seq");
    M::decode(&hex::decode(l["hex"].as_str().unwrap()).unwrap()[..]).unwrap()
}

/// The store dir of the recorded runs.
pub const RECORDED_STORE: &str = "/tmp/hqr/qrstore/nix/store";

/// A recorded step as a runner with store `/nix/store` would send it: the
/// recorded message, its store dir in the environment replaced (the base
/// names stay: an input-addressed path is taken as given), a fresh build id.
pub fn step_message(file: &str) -> proto::BuildMessage {
    let rec = recording(file);
    let m: proto::RunnerRequest = recorded(&rec, 6);
    let Some(runner_request::Message::Build(mut b)) = m.message else {
        panic!("seq 6 is a build")
    };
    for v in b.resolved_drv.as_mut().unwrap().env.values_mut() {
        if let Some(rest) = v.strip_prefix(RECORDED_STORE.as_bytes()) {
            *v = [b"/nix/store".as_slice(), rest].concat();
        }
    }
    b.build_id = uuid::Uuid::new_v4().to_string();
    b
}

/// A step of our own: `/bin/sh -c <script>` with output `out` named
/// `name`, and these inputs (base names).
pub fn own_step(name: &str, hash: &str, script: &str, inputs: &[&str]) -> proto::BuildMessage {
    let mut b = step_message("success.jsonl");
    let out = format!("{hash}-{name}");
    let r = b.resolved_drv.as_mut().unwrap();
    r.name = name.into();
    r.outputs.clear();
    r.outputs.insert(
        "out".into(),
        proto::Output {
            output: Some(proto::output::Output::InputAddressed(
                proto::StorePath::new(out.clone()),
            )),
        },
    );
    r.inputs = inputs.iter().map(|i| proto::StorePath::new(*i)).collect();
    r.args = vec![b"-c".to_vec(), script.as_bytes().to_vec()];
    r.env.insert("name".into(), name.as_bytes().to_vec());
    r.env
        .insert("out".into(), format!("/nix/store/{out}").into_bytes());
    b.drv = Some(proto::StorePath::new(format!("{hash}-{name}.drv")));
    b
}

/// A store path the double holds: its info and NAR.
#[derive(Clone)]
pub struct Held {
    pub info: ValidPathInfo,
    pub nar: Vec<u8>,
}

#[derive(Default)]
pub struct State {
    /// What builders sent, in order: (rpc, canonical JSON).
    pub received: Vec<(String, serde_json::Value)>,
    /// Tunnel messages to send, per joined machine (the sender side).
    pub tunnels: HashMap<String, mpsc::UnboundedSender<Result<RunnerRequest, Status>>>,
    /// Machines in the order they joined.
    pub joined: Vec<String>,
    /// Logs by drv base name (decompressed).
    pub logs: HashMap<String, Vec<u8>>,
    /// Uploaded NARs by base name, with the header info they came with.
    pub uploaded: HashMap<String, Held>,
    /// CompleteBuild messages by build id.
    pub completed: HashMap<String, BuildResultInfo>,
    /// Paths the runner has (FetchRequisites, FetchPaths, HasPath).
    pub store: HashMap<String, Held>,
    /// Dependency order of `store` for FetchRequisites.
    pub order: Vec<String>,
}

#[derive(Clone)]
pub struct FakeRunner {
    pub state: Arc<Mutex<State>>,
    pub server_version: String,
}

impl FakeRunner {
    pub fn new(server_version: &str) -> FakeRunner {
        FakeRunner {
            state: Arc::default(),
            server_version: server_version.into(),
        }
    }

    /// Serve on a free port of 127.0.0.1 on the given runtime; the port.
    pub fn serve(&self, rt: &tokio::runtime::Runtime) -> u16 {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = self.clone();
        rt.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(me)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        port
    }

    fn note(&self, rpc: &str, json: serde_json::Value) {
        self.state
            .lock()
            .unwrap()
            .received
            .push((rpc.to_owned(), json));
    }

    /// Hold `nar` as the store path `base` in `/nix/store` (no references),
    /// last in dependency order.
    pub fn hold(&self, base: &str, nar: &[u8]) {
        use sha2::Digest;
        let mut st = self.state.lock().unwrap();
        st.store.insert(
            base.into(),
            Held {
                info: ValidPathInfo {
                    path: Some(StorePath::new(base)),
                    info: Some(UnkeyedValidPathInfo {
                        nar_hash: Some(Hash::sha256(sha2::Sha256::digest(nar).into())),
                        nar_size: nar.len() as u64,
                        store_dir: "/nix/store".into(),
                        ..Default::default()
                    }),
                },
                nar: nar.to_vec(),
            },
        );
        st.order.push(base.into());
    }

    /// Send a message on machine `m`'s tunnel; false if it is gone.
    pub fn send(&self, m: &str, msg: runner_request::Message) -> bool {
        let st = self.state.lock().unwrap();
        st.tunnels
            .get(m)
            .is_some_and(|t| t.send(Ok(RunnerRequest { message: Some(msg) })).is_ok())
    }

    /// End machine `m`'s tunnel with an error, as a runner restart would.
    pub fn drop_tunnel(&self, m: &str) {
        if let Some(t) = self.state.lock().unwrap().tunnels.remove(m) {
            let _ = t.send(Err(Status::unavailable("the queue-runner went away")));
        }
    }

    pub fn received(&self) -> Vec<(String, serde_json::Value)> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn joined(&self) -> Vec<String> {
        self.state.lock().unwrap().joined.clone()
    }

    async fn check_version(&self, r: VersionCheckRequest) -> Result<VersionCheckResponse, Status> {
        self.note("CheckVersion", serde_json::to_value(&r).unwrap());
        Ok(VersionCheckResponse {
            compatible: r.version == self.server_version,
            server_version: self.server_version.clone(),
        })
    }

    async fn open_tunnel(
        &self,
        mut inbound: Streaming<BuilderRequest>,
    ) -> Result<BoxStream<RunnerRequest>, Status> {
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("No Ping message was sent"))?;
        self.note("OpenTunnel", serde_json::to_value(&first).unwrap());
        let Some(builder_request::Message::Join(j)) = first.message else {
            return Err(Status::invalid_argument("No Ping message was sent"));
        };
        if uuid::Uuid::parse_str(&j.machine_id).is_err() {
            return Err(Status::invalid_argument("Machine is not valid"));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let join = RunnerRequest {
            message: Some(runner_request::Message::Join(JoinResponse {
                machine_id: j.machine_id.clone(),
                max_concurrent_downloads: 5,
            })),
        };
        let ping = RunnerRequest {
            message: Some(runner_request::Message::Ping(SimplePingMessage {
                message: "ping".into(),
            })),
        };
        tx.send(Ok(join)).unwrap();
        tx.send(Ok(ping)).unwrap();
        {
            let mut st = self.state.lock().unwrap();
            st.tunnels.insert(j.machine_id.clone(), tx);
            st.joined.push(j.machine_id.clone());
        }
        // The builder's pings, kept like every other message.
        let me = self.clone();
        let machine = j.machine_id.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                me.note("OpenTunnel", serde_json::to_value(&m).unwrap());
            }
            // The builder ended its stream: a disconnect.
            me.state.lock().unwrap().tunnels.remove(&machine);
        });
        Ok(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        ))
    }

    async fn fetch_requisites(&self, r: StorePaths) -> Result<RequisitesResponse, Status> {
        self.note("FetchRequisites", serde_json::to_value(&r).unwrap());
        let st = self.state.lock().unwrap();
        // The closure of the asked paths, dependencies first.
        let mut want: Vec<String> = r.paths.iter().map(|p| p.path.clone()).collect();
        let mut closure = std::collections::BTreeSet::new();
        while let Some(p) = want.pop() {
            if let Some(h) = st.store.get(&p) {
                if closure.insert(p) {
                    let refs = h
                        .info
                        .info
                        .as_ref()
                        .map(|i| i.references.clone())
                        .unwrap_or_default();
                    want.extend(refs.into_iter().map(|r| r.path));
                }
            }
        }
        Ok(RequisitesResponse {
            requisites: st
                .order
                .iter()
                .filter(|p| closure.contains(*p))
                .map(|p| StorePath { path: p.clone() })
                .collect(),
        })
    }

    async fn fetch_paths(&self, r: StorePaths) -> Result<BoxStream<AddToStoreRequest>, Status> {
        self.note("FetchPaths", serde_json::to_value(&r).unwrap());
        let st = self.state.lock().unwrap();
        let mut infos = vec![];
        let mut nars = vec![];
        for p in &r.paths {
            let h = st
                .store
                .get(&p.path)
                .ok_or_else(|| Status::not_found(format!("{} is not valid", p.path)))?;
            infos.push(h.info.clone());
            nars.extend_from_slice(&h.nar);
        }
        let mut msgs = vec![Ok(AddToStoreRequest {
            content: Some(add_to_store_request::Content::Header(AddToStoreHeader {
                path_infos: infos,
            })),
        })];
        for c in frame::compress_chunks(&nars).unwrap() {
            msgs.push(Ok(AddToStoreRequest {
                content: Some(add_to_store_request::Content::NarChunk(c)),
            }));
        }
        Ok(Box::pin(tokio_stream::iter(msgs)))
    }

    async fn has_path(&self, r: StorePath) -> Result<HasPathResponse, Status> {
        self.note("HasPath", serde_json::to_value(&r).unwrap());
        let st = self.state.lock().unwrap();
        Ok(HasPathResponse {
            has_path: st.store.contains_key(&r.path) || st.uploaded.contains_key(&r.path),
        })
    }

    async fn build_log(&self, mut s: Streaming<LogChunk>) -> Result<Empty, Status> {
        let mut drv = None;
        let mut chunks = vec![];
        while let Some(c) = s.message().await? {
            self.note("BuildLog", serde_json::to_value(&c).unwrap());
            if drv.is_none() {
                drv = Some(
                    c.drv
                        .clone()
                        .ok_or_else(|| Status::invalid_argument("missing drv"))?
                        .path,
                );
            }
            chunks.push(c.data);
        }
        let drv = drv.ok_or_else(|| Status::internal("Empty stream"))?;
        let log =
            frame::decompress(&chunks, 64 << 20).map_err(|e| Status::internal(e.to_string()))?;
        self.state.lock().unwrap().logs.insert(drv, log);
        Ok(Empty {})
    }

    async fn build_result(&self, mut s: Streaming<AddToStoreRequest>) -> Result<Empty, Status> {
        let mut header = None;
        let mut chunks = vec![];
        while let Some(m) = s.message().await? {
            self.note("BuildResult", serde_json::to_value(&m).unwrap());
            match (m.content, &header) {
                (Some(add_to_store_request::Content::Header(h)), None) => header = Some(h),
                (Some(add_to_store_request::Content::NarChunk(c)), Some(_)) => chunks.push(c),
                _ => {
                    return Err(Status::internal(
                        "import error: the first message is not a header",
                    ))
                }
            }
        }
        let h = header.ok_or_else(|| Status::internal("import error: empty stream"))?;
        let nars = frame::decompress(&chunks, 1 << 30)
            .map_err(|e| Status::internal(format!("import error: {e}")))?;
        let split = frame::split_nars(&h.path_infos, &nars)
            .map_err(|e| Status::internal(format!("import error: {e}")))?;
        let mut st = self.state.lock().unwrap();
        for ((name, nar), info) in split.into_iter().zip(&h.path_infos) {
            st.uploaded.insert(
                name,
                Held {
                    info: info.clone(),
                    nar: nar.to_vec(),
                },
            );
        }
        Ok(Empty {})
    }

    async fn unary_note<M: serde::Serialize>(&self, rpc: &str, m: &M) -> Result<Empty, Status> {
        self.note(rpc, serde_json::to_value(m).unwrap());
        Ok(Empty {})
    }

    async fn complete_build(&self, r: BuildResultInfo) -> Result<Empty, Status> {
        self.note("CompleteBuild", serde_json::to_value(&r).unwrap());
        let mut st = self.state.lock().unwrap();
        // As the runner: only a machine whose tunnel is up can complete.
        if !st.tunnels.contains_key(&r.machine_id) {
            return Err(Status::internal(
                "failed to finalize build: machine unknown",
            ));
        }
        st.completed.insert(r.build_id.clone(), r);
        Ok(Empty {})
    }
}

impl tonic::server::NamedService for FakeRunner {
    const NAME: &'static str = "runner.v1.RunnerService";
}

/// One unary RPC of the double.
struct Unary<Q, A>(Handler<Q, A>);
impl<Q: Send + 'static, A: Send + 'static> tonic::server::UnaryService<Q> for Unary<Q, A> {
    type Response = A;
    type Future = BoxFuture<Result<Response<A>, Status>>;
    fn call(&mut self, r: Request<Q>) -> Self::Future {
        let f = (self.0)(r.into_inner());
        Box::pin(async move { f.await.map(Response::new) })
    }
}

struct ClientStream<Q, A>(Handler<Streaming<Q>, A>);
impl<Q: Send + 'static, A: Send + 'static> tonic::server::ClientStreamingService<Q>
    for ClientStream<Q, A>
{
    type Response = A;
    type Future = BoxFuture<Result<Response<A>, Status>>;
    fn call(&mut self, r: Request<Streaming<Q>>) -> Self::Future {
        let f = (self.0)(r.into_inner());
        Box::pin(async move { f.await.map(Response::new) })
    }
}

struct ServerStream<Q, A>(Handler<Q, BoxStream<A>>);
impl<Q: Send + 'static, A: Send + 'static> tonic::server::ServerStreamingService<Q>
    for ServerStream<Q, A>
{
    type Response = A;
    type ResponseStream = BoxStream<A>;
    type Future = BoxFuture<Result<Response<BoxStream<A>>, Status>>;
    fn call(&mut self, r: Request<Q>) -> Self::Future {
        let f = (self.0)(r.into_inner());
        Box::pin(async move { f.await.map(Response::new) })
    }
}

struct Bidi<Q, A>(Handler<Streaming<Q>, BoxStream<A>>);
impl<Q: Send + 'static, A: Send + 'static> tonic::server::StreamingService<Q> for Bidi<Q, A> {
    type Response = A;
    type ResponseStream = BoxStream<A>;
    type Future = BoxFuture<Result<Response<BoxStream<A>>, Status>>;
    fn call(&mut self, r: Request<Streaming<Q>>) -> Self::Future {
        let f = (self.0)(r.into_inner());
        Box::pin(async move { f.await.map(Response::new) })
    }
}

macro_rules! unary {
    ($me:expr, $req:expr, $q:ty, $a:ty, $method:ident) => {{
        let me = $me.clone();
        let svc = Unary::<$q, $a>(Arc::new(move |q| {
            let me = me.clone();
            Box::pin(async move { me.$method(q).await })
        }));
        let mut g = tonic::server::Grpc::new(tonic_prost::ProstCodec::<$a, $q>::default());
        g.unary(svc, $req).await
    }};
}

impl tower::Service<http::Request<tonic::body::Body>> for FakeRunner {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let rpc = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
            let res = match rpc.as_str() {
                "CheckVersion" => unary!(
                    me,
                    req,
                    VersionCheckRequest,
                    VersionCheckResponse,
                    check_version
                ),
                "FetchRequisites" => {
                    unary!(me, req, StorePaths, RequisitesResponse, fetch_requisites)
                }
                "HasPath" => unary!(me, req, StorePath, HasPathResponse, has_path),
                "CompleteBuild" => unary!(me, req, BuildResultInfo, Empty, complete_build),
                "BuildStepUpdate" => {
                    let m2 = me.clone();
                    let svc = Unary::<StepUpdate, Empty>(Arc::new(move |q| {
                        let me = m2.clone();
                        Box::pin(async move { me.unary_note("BuildStepUpdate", &q).await })
                    }));
                    let mut g = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                        Empty,
                        StepUpdate,
                    >::default());
                    g.unary(svc, req).await
                }
                "OpenTunnel" => {
                    let m2 = me.clone();
                    let svc = Bidi::<BuilderRequest, RunnerRequest>(Arc::new(move |s| {
                        let me = m2.clone();
                        Box::pin(async move { me.open_tunnel(s).await })
                    }));
                    let mut g = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                        RunnerRequest,
                        BuilderRequest,
                    >::default());
                    g.streaming(svc, req).await
                }
                "FetchPaths" => {
                    let m2 = me.clone();
                    let svc = ServerStream::<StorePaths, AddToStoreRequest>(Arc::new(move |q| {
                        let me = m2.clone();
                        Box::pin(async move { me.fetch_paths(q).await })
                    }));
                    let mut g = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                        AddToStoreRequest,
                        StorePaths,
                    >::default());
                    g.server_streaming(svc, req).await
                }
                "BuildLog" => {
                    let m2 = me.clone();
                    let svc = ClientStream::<LogChunk, Empty>(Arc::new(move |s| {
                        let me = m2.clone();
                        Box::pin(async move { me.build_log(s).await })
                    }));
                    let mut g = tonic::server::Grpc::new(
                        tonic_prost::ProstCodec::<Empty, LogChunk>::default(),
                    );
                    g.client_streaming(svc, req).await
                }
                "BuildResult" => {
                    let m2 = me.clone();
                    let svc = ClientStream::<AddToStoreRequest, Empty>(Arc::new(move |s| {
                        let me = m2.clone();
                        Box::pin(async move { me.build_result(s).await })
                    }));
                    let mut g = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                        Empty,
                        AddToStoreRequest,
                    >::default());
                    g.client_streaming(svc, req).await
                }
                _ => Status::unimplemented(format!("no method {rpc}")).into_http(),
            };
            Ok(res)
        })
    }
}
