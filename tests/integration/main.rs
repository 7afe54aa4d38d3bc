//! Integration tests: the real binary, real processes contending for real locks.

mod commit;
mod docs;
mod holes;
mod prompt;
mod run;
mod support;
