;; "Heaviest": always the instance with the highest weight (first one on ties).
;; A complete Sluice strategy in WebAssembly text, no SDK: check it with
;;   sluice plugin check plugins/examples/heaviest.wat
(module
  (memory (export "memory") 3)

  ;; The ABI marker.
  (func (export "sluice_abi_v1"))

  ;; The buffer lives at offset 1024; three 64 KiB pages hold the 32-byte header and up to
  ;; 6111 records of 32 bytes. Asking for more returns 0 ("cannot"): the host then falls
  ;; back to round-robin for that pool, and `sluice plugin check` fails on it.
  (func (export "sluice_buffer") (param $max i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $max) (i32.const 6111))
      (then (i32.const 0))
      (else (i32.const 1024))))

  ;; Record i starts at 1024 + 32 + 32*i; its weight (u32) is at +8, so at 1064 + 32*i.
  (func (export "sluice_pick") (param $n i32) (result i32)
    (local $i i32) (local $best i32) (local $best_weight i32) (local $weight i32)
    (local.set $best (i32.const -1))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $weight
          (i32.load (i32.add (i32.const 1064) (i32.mul (local.get $i) (i32.const 32)))))
        (if (i32.gt_u (local.get $weight) (local.get $best_weight))
          (then
            (local.set $best_weight (local.get $weight))
            (local.set $best (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $best)))
