;; sluice.log with the wrong parameters: refused at load.
(module
  (import "sluice" "log" (func (param i32)))
  (memory (export "memory") 1)
  (func (export "sluice_abi_v1"))
  (func (export "sluice_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "sluice_pick") (param i32) (result i32) (i32.const 0)))
