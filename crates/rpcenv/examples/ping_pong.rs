//! Two endpoints in one env play ping-pong through each other's refs: the smallest program that
//! shows endpoints, refs inside messages, send and ask.
//!
//! ```sh
//! cargo run --release -p rpcenv --example ping_pong
//! ```

use rpcenv::{EndpointCtx, HandlerResult, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcEnv};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
enum Msg {
    /// Start a rally of `n` hits against `opponent`.
    Serve {
        opponent: RpcEndpointRef<Msg>,
        n: u32,
    },
    /// The ball, with the hits left and who hit it.
    Ball {
        left: u32,
        from: RpcEndpointRef<Msg>,
    },
    /// How many hits did you make?
    Count,
}

impl rpcenv::RpcMessage for Msg {}

struct Player {
    hits: u32,
    done: std::sync::mpsc::Sender<String>,
}

impl RpcEndpoint for Player {
    type Message = Msg;

    fn receive(&mut self, ctx: &EndpointCtx<Msg>, msg: Msg) -> HandlerResult {
        let me = ctx.self_ref().ok_or("stopping")?.clone();
        match msg {
            Msg::Serve { opponent, n } => opponent.send(Msg::Ball { left: n, from: me })?,
            Msg::Ball { left: 0, .. } => self
                .done
                .send(format!("{} made the last hit", ctx.name()))?,
            Msg::Ball { left, from } => {
                self.hits += 1;
                from.send(Msg::Ball {
                    left: left - 1,
                    from: me,
                })?;
            }
            Msg::Count => {}
        }
        Ok(())
    }

    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<Msg>,
        _: Msg,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        ctx.reply(self.hits);
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = RpcEnv::builder("ping-pong").build()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let ping = env.setup_endpoint(
        "ping",
        Player {
            hits: 0,
            done: tx.clone(),
        },
    )?;
    let pong = env.setup_endpoint("pong", Player { hits: 0, done: tx })?;

    let rally = 100_000;
    let start = std::time::Instant::now();
    ping.send(Msg::Serve {
        opponent: pong.clone(),
        n: rally,
    })?;
    let last = rx.recv_timeout(std::time::Duration::from_secs(60))?;
    let elapsed = start.elapsed();
    let (a, b): (u32, u32) = (ping.ask_sync(Msg::Count)?, pong.ask_sync(Msg::Count)?);
    println!(
        "rally of {rally} hits in {elapsed:?} ({:.0} hits/s): ping {a}, pong {b}; {last}",
        f64::from(rally) / elapsed.as_secs_f64()
    );
    env.shutdown();
    env.await_termination()?;
    if a + b != rally {
        return Err(format!("expected {rally} hits, counted {}", a + b).into());
    }
    println!("ping-pong OK");
    Ok(())
}
