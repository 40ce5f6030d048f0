//! [`RpcEnv`]: the façade that wires the layers below it together and hosts named endpoints.
//!
//! - `builder`: [`RpcEnvBuilder`], which binds the server, starts the message loops and connects
//!   the dispatcher, the network and the transport handler to each other;
//! - `lifecycle`: the env's shared state (`EnvInner`) and its shutdown;
//! - `api`: [`RpcEnv`], the public API (register, look up, stop, shut down);
//! - `streams`: the part of that API that serves and fetches streams, chunks and uploads.
//! - `files`: the file methods of [`RpcEnv`] (its file server, `open_channel`, `fetch_file`).

mod api;
mod builder;
mod files;
mod lifecycle;
mod streams;

pub use api::RpcEnv;
pub use builder::RpcEnvBuilder;
