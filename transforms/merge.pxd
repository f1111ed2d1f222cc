# merge.py's classes as extension types, for the compiled build (see transforms/core_build.py)

cdef class MergePolicies:
    cdef public object timestamp_ids, precedence, _bucketed
    cpdef list write(self, view, stamps, datasets, attributes, dataset_id, timestamp_ms, seq, changed_paths)
    cpdef dict views(self, view, datasets)


cpdef _write_in_order(dict node, dict stamps, attributes, str prefix, ts, list written, list changed, list deferred)
