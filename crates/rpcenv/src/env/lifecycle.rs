//! The env's shared state, [`EnvInner`], and its lifecycle: the shutdown (endpoints stop first,
//! then connections close) and the termination others wait for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::address::{RpcAddress, RpcEndpointAddress};
use crate::conf::RpcConf;
use crate::dispatcher::{on_message_loop_thread, Dispatcher};
use crate::endpoint_ref::{Route, RpcEndpointRef};
use crate::file_channel::FilesPool;
use crate::file_server::FileRegistry;
use crate::message::RpcMessage;
use crate::net::Network;
use crate::verifier::{VerifierRequest, VERIFIER_NAME};

/// Whether the env has terminated, for the threads and tasks that wait for it.
#[derive(Default)]
pub(super) struct Termination {
    done: Mutex<bool>,
    cond: Condvar,
    notify: tokio::sync::Notify,
}

impl Termination {
    fn finish(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cond.notify_all();
        self.notify.notify_waiters();
    }

    pub(super) fn is_done(&self) -> bool {
        *self.done.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The state every handle of an env shares. Dropping the last handle shuts the env down.
pub(crate) struct EnvInner {
    pub(super) name: String,
    pub(super) address: Option<RpcAddress>,
    pub(super) conf: RpcConf,
    pub(super) dispatcher: Arc<Dispatcher>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) network: Arc<Network>,
    /// What the env's file server serves (empty in client mode).
    pub(super) files: Arc<FileRegistry>,
    /// The `files` client pool of `open_channel`.
    pub(super) files_pool: Arc<FilesPool>,
    pub(super) shutdown_started: AtomicBool,
    pub(super) termination: Arc<Termination>,
}

impl EnvInner {
    /// A ref to the endpoint at `address` (of another env), through the outbox of its host.
    pub(super) fn remote_ref<M: RpcMessage>(
        &self,
        address: RpcEndpointAddress,
        host: &RpcAddress,
    ) -> RpcEndpointRef<M> {
        RpcEndpointRef::new(
            address,
            Route::Outbox(host.clone()),
            self.dispatcher.defaults().clone(),
        )
    }

    /// The `endpoint-verifier` of the env at `address`.
    pub(super) fn verifier_at(&self, address: &RpcAddress) -> RpcEndpointRef<VerifierRequest> {
        self.remote_ref(
            RpcEndpointAddress::new(Some(address.clone()), VERIFIER_NAME),
            address,
        )
    }

    /// Starts the shutdown once; runs it here when this thread may block, else on a thread of
    /// its own (a handler or an async task must never wait for the message loops).
    pub(super) fn begin_shutdown(&self) {
        if self.shutdown_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let dispatcher = self.dispatcher.clone();
        let network = self.network.clone();
        let files_pool = self.files_pool.clone();
        let termination = self.termination.clone();
        let name = self.name.clone();
        let run = move || {
            tracing::debug!(env = %name, "RpcEnv shutting down");
            // Endpoints stop first, so that they hear of no disconnection their own shutdown
            // causes (SPARK-14699); then queued messages fail and connections close.
            dispatcher.shutdown();
            network.shutdown();
            files_pool.close();
            termination.finish();
            tracing::debug!(env = %name, "RpcEnv terminated");
        };
        if on_message_loop_thread() || tokio::runtime::Handle::try_current().is_ok() {
            let spawned = std::thread::Builder::new()
                .name("rpcenv-shutdown".into())
                .spawn(run);
            if let Err(e) = spawned {
                tracing::error!(env = %self.name, error = %e, "cannot start the shutdown thread");
            }
        } else {
            run();
        }
    }
}

impl Drop for EnvInner {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

impl Termination {
    /// Blocks until the env has terminated.
    pub(super) fn wait(&self) {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            done = self.cond.wait(done).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Completes when the env has terminated.
    pub(super) async fn finished(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_done() {
                return;
            }
            notified.await;
        }
    }
}
