;; Declares 512 MiB of initial memory: refused at load (the cap is 16 MiB).
(module
  (memory (export "memory") 8192)
  (func (export "sluice_abi_v1"))
  (func (export "sluice_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "sluice_pick") (param i32) (result i32) (i32.const 0)))
