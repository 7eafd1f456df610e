//! Shared harness of the root integration tests (see tests/tests/).
