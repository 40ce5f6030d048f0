//! # rpcenv
//!
//! Apache Spark's RPC environment re-created in Rust: an [`RpcEnv`] hosts named endpoints, each
//! with an inbox processed by a pool of message-loop threads; [`RpcEndpointRef`]s send one-way
//! messages and make asks whose replies come back through an [`RpcCallContext`].
//!
//! ```
//! use rpcenv::{EndpointCtx, HandlerResult, RpcCallContext, RpcEndpoint, RpcEnv};
//!
//! struct Echo;
//! impl RpcEndpoint for Echo {
//!     type Message = String;
//!     fn receive_and_reply(&mut self, _: &EndpointCtx<String>, msg: String, ctx: RpcCallContext) -> HandlerResult {
//!         ctx.reply(format!("echo: {msg}"));
//!         Ok(())
//!     }
//! }
//!
//! let env = RpcEnv::builder("demo").client_mode(true).build()?;
//! let echo = env.setup_endpoint("echo", Echo)?;
//! assert_eq!(echo.ask_sync::<String>("hi".into())?, "echo: hi");
//! env.shutdown();
//! # Ok::<(), rpcenv::RpcError>(())
//! ```
//!
//! # Layers
//!
//! Modules import only from their own layer or the layers below, never upward, and never in a
//! cycle (the table in the repository's `ARCHITECTURE.md` is the rule, and the `layering` test
//! checks every `crate::` path against it). A lower layer that needs something from above holds
//! a trait object.
//!
//! 1. core: [`address`], [`conf`], `error`, `message`, `timeout`, `runtime`, `backoff`,
//!    [`codec`] (the wire formats), `decode_scope`, [`metrics`] (what an env measures, through
//!    the `metrics` facade), [`stats`] (the snapshot `RpcEnv::stats` returns), `slow_handler`,
//!    `stream_manager` (the registered streams' state), `upload` (upload receivers),
//!    `file_uri` (the URIs of served files);
//! 2. local, everything inside one env: `reply`, `call_context`, `mailbox`, `endpoint_ref`,
//!    `endpoint`, `flavour` (both endpoint flavours behind one interface), `inbox`,
//!    `dispatcher` (registry and message loops), `ref_codec`, `file_server` (what the env
//!    serves, and which file a stream id names);
//! 3. remote, other processes: `outbox`, `net` (the network and the transport handler),
//!    `verifier`, `security`, `stream_service` (chunks, streams and uploads served),
//!    `stream_client` (reading a remote stream), `file_channel` (fetching served files over
//!    the `files` pool);
//! 4. `env`: the façade ([`RpcEnv`], [`RpcEnvBuilder`]) that wires them together.

pub mod address;
mod announced;
mod ask_deadlines;
mod blocking;
mod call_context;
pub mod codec;
pub mod conf;
mod decode_scope;
mod dispatcher;
mod endpoint;
mod endpoint_ref;
mod env;
mod error;
mod file_channel;
mod file_server;
mod file_uri;
mod flavour;
mod inbox;
mod mailbox;
mod message;
pub mod metrics;
mod net;
mod outbox;
mod pace;
mod ref_codec;
mod reply;
mod reply_slot;
mod run_queue;
mod runtime;
mod security;
mod slow_handler;
pub mod stats;
mod stats_endpoint;
mod stream_client;
mod stream_manager;
mod stream_service;
mod timeout;
mod upload;
mod verifier;

pub use address::{AddressError, RpcAddress, RpcEndpointAddress};
pub use call_context::RpcCallContext;
pub use conf::{ConfError, RpcConf};
pub use endpoint::{ConcurrentRpcEndpoint, EndpointCtx, RpcEndpoint};
pub use endpoint_ref::RpcEndpointRef;
pub use env::{RpcEnv, RpcEnvBuilder};
pub use error::{BoxError, Failure, FailureKind, HandlerResult, RpcError, SharedError};
pub use file_channel::{BlockingFileChannel, FileChannel};
pub use file_server::FileServer;
pub use message::{RpcMessage, RpcReply};
pub use reply::{AbortHandle, Ask};
pub use rpcenv_transport::{BodySource, FileRegion, ReplyBody};
pub use stats::{EndpointStats, EnvStats, PeerStats, StatsRequest, STATS_NAME};
pub use stream_client::{BlockingStreamReader, StreamReader};
pub use stream_manager::{stream_chunk_id, StreamManager, StreamOwner};
pub use timeout::RpcTimeout;
pub use upload::{Upload, UploadReceiver, UploadReply};
pub use verifier::VERIFIER_NAME;
