//! Integration tests: the real binary, real processes contending for real locks.

mod bench;
mod commit;
mod docs;
mod etcd;
mod examples;
mod faults;
mod holes;
mod hostile;
mod hostile2;
mod operator;
mod prompt;
mod run;
mod stress;
mod support;
