/* A Sluice strategy in C (ABI v1): requests that carry a header go to the instances tagged
 * as canaries, every other request to the rest, round-robin within each group. Retries come
 * back through `sluice_pick` with the tried instances left out (header flag bit 0), so a
 * retried stable request stays off the canaries while a stable instance is left.
 *
 * Build (Debian: clang and lld):
 *   clang --target=wasm32-unknown-unknown -O2 -nostdlib -Wl,--no-entry -o canary.wasm canary.c
 *
 * Config: {"header": "x-canary", "tag": "canary"} (both optional, these are the defaults);
 * the strategy's `tags` must include the tag:
 *   [strategies.canary]
 *   wasm = "canary.wasm"
 *   tags = ["canary"]
 *   config = { header = "x-canary" }
 */

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

/* -nostdlib: clang may still emit calls to these for copies and zeroing. */
void *memcpy(void *dst, const void *src, unsigned long n) {
    u8 *d = dst;
    const u8 *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

void *memset(void *dst, int c, unsigned long n) {
    u8 *d = dst;
    while (n--) *d++ = (u8)c;
    return dst;
}

__attribute__((import_module("sluice"), import_name("log")))
void sluice_log(int level, const char *ptr, int len);

__attribute__((import_module("sluice"), import_name("request_header")))
int sluice_request_header(const char *name, int name_len, char *out, int out_cap);

#define MAX_INSTANCES 4096
#define HEADER_SIZE 32
#define RECORD_SIZE 32
#define FLAG_RETRY 1u

/* The pick buffer: 8-byte aligned, so u64 fields load aligned (wasm does not require it). */
static u64 buffer[(HEADER_SIZE + RECORD_SIZE * MAX_INSTANCES) / 8];
/* Where sluice_alloc hands out memory for sluice_tags and sluice_configure. */
static char scratch[4096];

static char tag_names[512];
static int tag_names_len;
static char header_name[64] = "x-canary";
static int header_len = 8;
static char tag_name[64] = "canary";
static int tag_len = 6;
static u32 canary_bit;
static u32 next_canary, next_stable;

static u32 u32_at(const u8 *p) { return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24; }

static int equal(const char *a, int a_len, const char *b, int b_len) {
    if (a_len != b_len) return 0;
    for (int i = 0; i < a_len; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static void log_line(int level, const char *text) {
    int n = 0;
    while (text[n]) n++;
    sluice_log(level, text, n);
}

/* Copies the string value of "key" in a flat JSON object into out (no escapes handled);
 * returns its length, or -1 when the key is absent. */
static int json_string(const char *json, int len, const char *key, char *out, int cap) {
    int key_len = 0;
    while (key[key_len]) key_len++;
    for (int i = 0; i + key_len + 2 <= len; i++) {
        if (json[i] != '"' || !equal(json + i + 1, key_len, key, key_len) || json[i + 1 + key_len] != '"')
            continue;
        int j = i + 2 + key_len;
        while (j < len && (json[j] == ' ' || json[j] == ':')) j++;
        if (j >= len || json[j] != '"') return -1;
        j++;
        int n = 0;
        while (j < len && json[j] != '"' && n < cap) out[n++] = json[j++];
        return n;
    }
    return -1;
}

__attribute__((export_name("sluice_abi_v1"))) void sluice_abi_v1(void) {}

__attribute__((export_name("sluice_buffer"))) int sluice_buffer(int max_instances) {
    return max_instances <= MAX_INSTANCES ? (int)buffer : 0; /* 0: "cannot" */
}

__attribute__((export_name("sluice_alloc"))) int sluice_alloc(int len) {
    return len <= (int)sizeof scratch ? (int)scratch : 0;
}

/* The tag names, joined by '\n', before sluice_configure: kept to resolve the tag by name. */
__attribute__((export_name("sluice_tags"))) int sluice_tags(const char *ptr, int len) {
    if (len > (int)sizeof tag_names) return 1;
    memcpy(tag_names, ptr, len);
    tag_names_len = len;
    return 0;
}

__attribute__((export_name("sluice_configure"))) int sluice_configure(const char *ptr, int len) {
    int n = json_string(ptr, len, "header", header_name, sizeof header_name);
    if (n > 0) header_len = n;
    n = json_string(ptr, len, "tag", tag_name, sizeof tag_name);
    if (n > 0) tag_len = n;
    /* The tag's bit is its position in the strategy's tags. */
    int bit = 0, start = 0;
    canary_bit = 0;
    for (int i = 0; i <= tag_names_len; i++) {
        if (i == tag_names_len || tag_names[i] == '\n') {
            if (equal(tag_names + start, i - start, tag_name, tag_len) && bit < 32) canary_bit = 1u << bit;
            bit++;
            start = i + 1;
        }
    }
    if (!canary_bit) {
        log_line(1, "canary: the tag is not among the strategy's tags");
        return 1;
    }
    log_line(3, "canary: configured");
    return 0;
}

/* The next instance of the group (canary or not) after `*cursor`, or -1 when it is empty. */
static int next_in_group(const u8 *records, int n, int canary, u32 *cursor) {
    for (int k = 0; k < n; k++) {
        int i = (int)((*cursor + (u32)k) % (u32)n);
        int is_canary = (u32_at(records + i * RECORD_SIZE + 24) & canary_bit) != 0;
        if (is_canary == canary) {
            *cursor = (u32)i + 1;
            return i;
        }
    }
    return -1;
}

__attribute__((export_name("sluice_pick"))) int sluice_pick(int n) {
    const u8 *head = (const u8 *)buffer;
    const u8 *records = head + HEADER_SIZE;
    char value[8];
    int wants_canary = sluice_request_header(header_name, header_len, value, sizeof value) > 0;
    /* A retry (u32_at(head + 12) & FLAG_RETRY) needs nothing special here: the host has
     * already left out the instances this request tried. */
    int pick = next_in_group(records, n, wants_canary, wants_canary ? &next_canary : &next_stable);
    if (pick < 0) /* nothing in that group: the other serves */
        pick = next_in_group(records, n, !wants_canary, wants_canary ? &next_stable : &next_canary);
    return pick;
}
