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
//! The layers, and where each concept lives:
//! - [`address`]: `RpcAddress`, `RpcEndpointAddress` and their URI forms.
//! - [`conf`]: `RpcConf`, the settings.
//! - `endpoint`, `endpoint_ref`, `call_context`, `reply`: the API an application touches.
//! - `dispatcher` (registry + message loops) and `inbox` (per-endpoint queue and its rules).

pub mod address;
mod call_context;
pub mod codec;
pub mod conf;
mod decode_scope;
mod dispatcher;
mod endpoint;
mod endpoint_ref;
mod env;
mod error;
mod flavour;
mod inbox;
mod mailbox;
mod message;
mod net;
mod outbox;
mod ref_codec;
mod reply;
mod runtime;
mod security;
mod timeout;
mod verifier;

pub use address::{AddressError, RpcAddress, RpcEndpointAddress};
pub use call_context::RpcCallContext;
pub use conf::{ConfError, RpcConf};
pub use endpoint::{ConcurrentRpcEndpoint, EndpointCtx, RpcEndpoint};
pub use endpoint_ref::RpcEndpointRef;
pub use env::{RpcEnv, RpcEnvBuilder};
pub use error::{BoxError, Failure, FailureKind, HandlerResult, RpcError, SharedError};
pub use message::{RpcMessage, RpcReply};
pub use reply::{AbortHandle, Ask};
pub use timeout::RpcTimeout;
pub use verifier::VERIFIER_NAME;
