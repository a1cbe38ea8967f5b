/* Run functions of a TVM-built Hexagon graph library under qemu-hexagon (no Hexagon SDK).
 *
 *   hexagon_driver LIBRARY.so JOBFILE
 *   hexagon_driver LIBRARY.so -          (serve: jobs from stdin, "ready" once, then one
 *                                          "done SYMBOL" / "error SYMBOL ..." line per call)
 *
 * The library is the shared object `targets.hexagon.build_graph_library` links with ld.lld. A
 * static musl executable cannot dlopen, so this driver maps the library itself: it copies the
 * PT_LOAD segments into one RWX mapping, applies the dynamic relocations (R_HEX_32, GLOB_DAT,
 * JMP_SLOT, RELATIVE; anything else is refused), resolves the library's undefined imports
 * (TVMFFIErrorSetRaisedFromCStrParts, and memset/memcpy/memmove that LLVM may emit for fills and
 * copies; the manifest lists a library's imports) and fills the function-pointer variables TVM's
 * codegen leaves for its runtime (__TVMFFIFunctionCall, __TVMBackendAllocWorkspace, ...).
 *
 * JOBFILE is text, one record per line (PATH has no spaces; files hold raw little-endian data):
 *   call SYMBOL NARGS
 *   tensor in|out DTYPE_CODE BITS NDIM DIM0 ... DIMn-1 PATH     (NARGS lines follow each call)
 * Inputs are read before the call, outputs written after it. Exit status: 0 ok, 2 usage or I/O,
 * 3 library load, 4 a graph function returned an error (its message is printed on stderr).
 */
#include <dlpack/dlpack.h>
#include <elf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <tvm/ffi/c_api.h>

#define MAX_ARGS 16
#define MAX_DIMS 8
#define ALIGN 128 /* one HVX vector; TVM assumes >= 64-byte aligned tensors */

#ifndef R_HEX_32
#define R_HEX_32 6
#endif
#ifndef R_HEX_GLOB_DAT
#define R_HEX_GLOB_DAT 33
#endif
#ifndef R_HEX_JMP_SLOT
#define R_HEX_JMP_SLOT 34
#endif
#ifndef R_HEX_RELATIVE
#define R_HEX_RELATIVE 35
#endif

static void die(int code, const char* what, const char* detail) {
  fprintf(stderr, "hexagon_driver: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  exit(code);
}

/* ---- the few TVM runtime entry points generated code reaches ---------------------------- */

static int g_set_device_handle; /* its address is the handle of "__tvm_set_device" */
static int g_library_ctx;       /* what __tvm_ffi__library_ctx points at: opaque to the library */

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t num_parts) {
  fprintf(stderr, "%s: ", kind ? kind : "Error");
  for (int32_t i = 0; i < num_parts; ++i) {
    if (parts[i]) fputs(parts[i], stderr);
  }
  fputc('\n', stderr);
}

static int env_mod_lookup(void* library_ctx, const char* name, void** out) {
  (void)library_ctx;
  if (strcmp(name, "__tvm_set_device") == 0) { /* a no-op here: one device, one thread */
    *out = &g_set_device_handle;
    return 0;
  }
  const char* parts[2] = {"no runtime function ", name};
  TVMFFIErrorSetRaisedFromCStrParts("RuntimeError", parts, 2);
  return -1;
}

static int function_call(void* func, TVMFFIAny* args, int32_t num_args, TVMFFIAny* result) {
  (void)args;
  (void)num_args;
  if (func == &g_set_device_handle) {
    result->type_index = kTVMFFINone;
    return 0;
  }
  const char* parts[1] = {"call of an unknown runtime function handle"};
  TVMFFIErrorSetRaisedFromCStrParts("RuntimeError", parts, 1);
  return -1;
}

static int handle_init_once(void** handle, int (*init)(void** result)) {
  return *handle ? 0 : init(handle);
}

static size_t round_up(size_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }

static void* alloc_workspace(int device_type, int device_id, uint64_t nbytes, int code, int bits) {
  (void)device_type, (void)device_id, (void)code, (void)bits;
  return aligned_alloc(ALIGN, round_up(nbytes ? (size_t)nbytes : 1));
}

static int free_workspace(int device_type, int device_id, void* ptr) {
  (void)device_type, (void)device_id;
  free(ptr);
  return 0;
}

/* ---- a minimal loader for one ld.lld -shared Hexagon object ------------------------------ */

typedef struct {
  uint8_t* base;
  const Elf32_Sym* symtab;
  const char* strtab;
  uint32_t nsyms;
} Library;

static const Elf32_Sym* find_symbol(const Library* lib, const char* name) {
  for (uint32_t i = 1; i < lib->nsyms; ++i) {
    const Elf32_Sym* sym = &lib->symtab[i];
    if (sym->st_shndx != SHN_UNDEF && strcmp(lib->strtab + sym->st_name, name) == 0) return sym;
  }
  return NULL;
}

static void* lookup(const Library* lib, const char* name) {
  const Elf32_Sym* sym = find_symbol(lib, name);
  return sym ? lib->base + sym->st_value : NULL;
}

static uint32_t import_address(const char* name) {
  static const struct { const char* name; void* address; } imports[] = {
      {"TVMFFIErrorSetRaisedFromCStrParts", (void*)&TVMFFIErrorSetRaisedFromCStrParts},
      {"memset", (void*)&memset},
      {"memcpy", (void*)&memcpy},
      {"memmove", (void*)&memmove},
  };
  for (size_t i = 0; i < sizeof imports / sizeof imports[0]; ++i) {
    if (strcmp(name, imports[i].name) == 0) return (uint32_t)(uintptr_t)imports[i].address;
  }
  die(3, "the library imports a symbol this driver does not provide", name);
  return 0;
}

static void relocate(const Library* lib, const Elf32_Rela* rel, size_t bytes) {
  for (size_t i = 0; i < bytes / sizeof(Elf32_Rela); ++i) {
    uint32_t type = ELF32_R_TYPE(rel[i].r_info), index = ELF32_R_SYM(rel[i].r_info);
    uint32_t* where = (uint32_t*)(lib->base + rel[i].r_offset);
    uint32_t value = 0;
    if (index != 0) {
      const Elf32_Sym* sym = &lib->symtab[index];
      value = sym->st_shndx != SHN_UNDEF ? (uint32_t)(uintptr_t)(lib->base + sym->st_value)
                                         : import_address(lib->strtab + sym->st_name);
    }
    switch (type) {
      case R_HEX_32:
      case R_HEX_GLOB_DAT:
      case R_HEX_JMP_SLOT:
        *where = value + (uint32_t)rel[i].r_addend;
        break;
      case R_HEX_RELATIVE:
        *where = (uint32_t)(uintptr_t)lib->base + (uint32_t)rel[i].r_addend;
        break;
      default: {
        char msg[32];
        snprintf(msg, sizeof msg, "type %u", type);
        die(3, "unsupported relocation", msg);
      }
    }
  }
}

static void* read_file(const char* path, size_t* size) {
  FILE* f = fopen(path, "rb");
  if (!f) die(2, "cannot open", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  void* data = aligned_alloc(ALIGN, round_up(n > 0 ? (size_t)n : 1));
  if (!data || (n > 0 && fread(data, 1, (size_t)n, f) != (size_t)n)) die(2, "cannot read", path);
  fclose(f);
  *size = (size_t)n;
  return data;
}

static Library load_library(const char* path) {
  size_t size;
  uint8_t* image = read_file(path, &size);
  const Elf32_Ehdr* eh = (const Elf32_Ehdr*)image;
  if (size < sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_machine != EM_QDSP6 ||
      eh->e_type != ET_DYN) {
    die(3, "not a Hexagon shared object", path);
  }
  const Elf32_Phdr* ph = (const Elf32_Phdr*)(image + eh->e_phoff);
  uint32_t span = 0;
  const Elf32_Dyn* dyn_file = NULL;
  for (int i = 0; i < eh->e_phnum; ++i) {
    if (ph[i].p_type == PT_LOAD && ph[i].p_vaddr + ph[i].p_memsz > span) span = ph[i].p_vaddr + ph[i].p_memsz;
    if (ph[i].p_type == PT_DYNAMIC) dyn_file = (const Elf32_Dyn*)(image + ph[i].p_offset);
  }
  if (!dyn_file) die(3, "no PT_DYNAMIC in", path);
  Library lib = {0};
  lib.base = mmap(NULL, span, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (lib.base == MAP_FAILED) die(3, "mmap failed for", path);
  for (int i = 0; i < eh->e_phnum; ++i) {
    if (ph[i].p_type == PT_LOAD) memcpy(lib.base + ph[i].p_vaddr, image + ph[i].p_offset, ph[i].p_filesz);
  }
  const Elf32_Rela *rela = NULL, *jmprel = NULL;
  size_t rela_size = 0, jmprel_size = 0;
  for (const Elf32_Dyn* d = dyn_file; d->d_tag != DT_NULL; ++d) {
    uint8_t* at = lib.base + d->d_un.d_ptr;
    switch (d->d_tag) {
      case DT_SYMTAB: lib.symtab = (const Elf32_Sym*)at; break;
      case DT_STRTAB: lib.strtab = (const char*)at; break;
      case DT_HASH: lib.nsyms = ((const uint32_t*)at)[1]; break; /* nchain == number of symbols */
      case DT_RELA: rela = (const Elf32_Rela*)at; break;
      case DT_RELASZ: rela_size = d->d_un.d_val; break;
      case DT_JMPREL: jmprel = (const Elf32_Rela*)at; break;
      case DT_PLTRELSZ: jmprel_size = d->d_un.d_val; break;
      case DT_TEXTREL: die(3, "text relocations are not supported", path); break;
      default: break;
    }
  }
  if (!lib.symtab || !lib.strtab || !lib.nsyms) die(3, "no DT_SYMTAB/DT_STRTAB/DT_HASH in", path);
  if (rela) relocate(&lib, rela, rela_size);
  if (jmprel) relocate(&lib, jmprel, jmprel_size);
  free(image);

  struct { const char* name; void* value; } slots[] = {
      {"__TVMFFIFunctionCall", (void*)&function_call},
      {"__TVMFFIEnvModLookupFromImports", (void*)&env_mod_lookup},
      {"__TVMFFIHandleInitOnce", (void*)&handle_init_once},
      {"__TVMBackendAllocWorkspace", (void*)&alloc_workspace},
      {"__TVMBackendFreeWorkspace", (void*)&free_workspace},
      {"__tvm_ffi__library_ctx", (void*)&g_library_ctx},
  };
  for (size_t i = 0; i < sizeof slots / sizeof slots[0]; ++i) {
    void** slot = lookup(&lib, slots[i].name);
    if (slot) *slot = slots[i].value; /* absent when no graph needs it */
  }
  return lib;
}

/* ---- jobs --------------------------------------------------------------------------------- */

typedef struct {
  DLTensor tensor;
  int64_t shape[MAX_DIMS];
  int is_output;
  char path[1024];
} Arg;

static size_t nbytes(const DLTensor* t) {
  size_t n = (t->dtype.bits * t->dtype.lanes + 7) / 8;
  for (int i = 0; i < t->ndim; ++i) n *= (size_t)t->shape[i];
  return n;
}

static void read_arg(FILE* job, Arg* arg) {
  char io[8];
  int code, bits, ndim;
  if (fscanf(job, " tensor %7s %d %d %d", io, &code, &bits, &ndim) != 4 || ndim < 0 || ndim > MAX_DIMS) {
    die(2, "bad tensor record in job file", NULL);
  }
  memset(arg, 0, sizeof *arg);
  for (int i = 0; i < ndim; ++i) {
    long long d;
    if (fscanf(job, " %lld", &d) != 1) die(2, "bad tensor shape in job file", NULL);
    arg->shape[i] = d;
  }
  if (fscanf(job, " %1023s", arg->path) != 1) die(2, "missing tensor path in job file", NULL);
  if (strcmp(io, "in") != 0 && strcmp(io, "out") != 0) die(2, "tensor record is neither in nor out", io);
  arg->is_output = strcmp(io, "out") == 0;
  DLTensor* t = &arg->tensor;
  t->device.device_type = kDLHexagon;
  t->device.device_id = 0;
  t->ndim = ndim;
  t->dtype.code = (uint8_t)code;
  t->dtype.bits = (uint8_t)bits;
  t->dtype.lanes = 1;
  t->shape = arg->shape;
  t->strides = NULL;
  t->byte_offset = 0;
  size_t want = nbytes(t);
  if (arg->is_output) {
    t->data = aligned_alloc(ALIGN, round_up(want ? want : 1));
    memset(t->data, 0, want);
  } else {
    size_t got;
    t->data = read_file(arg->path, &got);
    if (got != want) die(2, "input file size does not match its shape", arg->path);
  }
}

static void write_output(const Arg* arg) {
  FILE* f = fopen(arg->path, "wb");
  size_t n = nbytes(&arg->tensor);
  if (!f || fwrite(arg->tensor.data, 1, n, f) != n) die(2, "cannot write", arg->path);
  fclose(f);
}

int main(int argc, char** argv) {
  if (argc != 3) die(2, "usage: hexagon_driver LIBRARY.so JOBFILE|-", NULL);
  Library lib = load_library(argv[1]);
  int serve = strcmp(argv[2], "-") == 0; /* the NPU service's driver loop: jobs on stdin, one reply line each */
  FILE* job = serve ? stdin : fopen(argv[2], "r");
  if (!job) die(2, "cannot open", argv[2]);
  if (serve) {
    printf("ready\n");
    fflush(stdout);
  }
  char symbol[256];
  int nargs, calls = 0;
  while (fscanf(job, " call %255s %d", symbol, &nargs) == 2) {
    if (nargs < 0 || nargs > MAX_ARGS) die(2, "too many arguments for", symbol);
    typedef int (*PackedFunc)(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
    PackedFunc fn = (PackedFunc)lookup(&lib, symbol);
    if (!fn) die(3, "symbol not found in library", symbol);
    Arg args[MAX_ARGS];
    TVMFFIAny packed[MAX_ARGS];
    for (int i = 0; i < nargs; ++i) {
      read_arg(job, &args[i]);
      memset(&packed[i], 0, sizeof packed[i]);
      packed[i].type_index = kTVMFFIDLTensorPtr;
      packed[i].v_ptr = &args[i].tensor;
    }
    TVMFFIAny result;
    memset(&result, 0, sizeof result);
    result.type_index = kTVMFFINone;
    int failed = fn(NULL, packed, nargs, &result) != 0;
    if (failed && !serve) die(4, "graph function failed", symbol);
    for (int i = 0; i < nargs; ++i) {
      if (args[i].is_output && !failed) write_output(&args[i]);
      free(args[i].tensor.data);
    }
    if (serve) { /* a failed graph is the caller's error, not the driver's: keep serving */
      printf(failed ? "error %s failed (its message is on stderr)\n" : "done %s\n", symbol);
      fflush(stdout);
    }
    ++calls;
  }
  if (!feof(job)) die(2, "unparsable line in job file", argv[2]);
  fclose(job);
  printf("hexagon_driver: %d call(s) ok\n", calls);
  return 0;
}
