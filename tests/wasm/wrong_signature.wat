;; sluice_pick takes an i64: refused at load.
(module
  (memory (export "memory") 1)
  (func (export "sluice_abi_v1"))
  (func (export "sluice_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "sluice_pick") (param i64) (result i32) (i32.const 0)))
