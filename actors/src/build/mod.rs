//! Builds: a project's packages as a DAG, run where the configuration allows, with inputs and
//! outputs moved by content digest and unchanged work served from the cache.

pub mod cas;
pub mod exec;
pub mod project;
