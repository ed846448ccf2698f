//! Rollcall: demo, simulator, evaluation, benchmarks and end-to-end test helpers.
