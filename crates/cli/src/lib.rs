//! The library half of the `rpcenv` command: the miniature cluster its `demo`, `master`,
//! `worker` and `submit` commands run (messages, the master's socket-free rules, the endpoints),
//! shared with the command's tests and the master's fuzz target.

pub mod cluster;
