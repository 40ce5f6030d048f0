//! Spark network-common's frame protocol over tokio (work in progress).
