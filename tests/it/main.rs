mod sinks;
mod support;
