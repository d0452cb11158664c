/**
 * The one typing of h5wasm's low-level module (the Emscripten exports its high-level API does not cover):
 * reads and writes of hyperslabs through a `_malloc`ed heap buffer, dataset metadata and filters, resizing,
 * and the variable-length string memory. Every call returns an HDF5 status (< 0 is an error), checked by
 * the caller. Views of HEAPU8 die when the heap grows: take them after any allocation.
 */
/** Dataset metadata as `get_dataset_metadata` gives it (and `create_dataset` takes it). */
export interface WasmMeta {
  type: number;
  size: number;
  signed: boolean;
  vlen: boolean;
  littleEndian: boolean;
  cset?: number;
  shape: number[] | null;
  maxshape: number[] | null;
  chunks: number[] | null;
  compound_type?: unknown;
  enum_type?: unknown;
}

/** One filter of a dataset's pipeline (`get_dataset_filters`). */
export interface WasmFilter {
  id: number;
  name: string;
  cd_values: number[];
}

export interface Wasm {
  HEAPU8: Uint8Array;
  _malloc(n: number): number;
  _free(p: number): void;
  get_dataset_data(
    fid: bigint,
    path: string,
    count: bigint[] | null,
    offset: bigint[] | null,
    strides: bigint[] | null,
    ptr: bigint,
  ): number;
  set_dataset_data(
    fid: bigint,
    path: string,
    count: bigint[] | null,
    offset: bigint[] | null,
    strides: bigint[] | null,
    ptr: bigint,
  ): number;
  resize_dataset(fid: bigint, path: string, shape: bigint[]): number;
  create_dataset(fid: bigint, path: string, ptr: bigint, meta: unknown): number;
  get_dataset_metadata(fid: bigint, path: string): WasmMeta;
  get_dataset_filters(fid: bigint, path: string): WasmFilter[];
  reclaim_vlen_memory(fid: bigint, path: string, attr: string, ptr: bigint): number;
}

/** H5S_UNLIMITED as h5wasm's metadata reports it. */
export const UNLIMITED = 18446744073709551615n;
