# 12 concurrent 30 MB chunked bodies against a running gateway; prints RSS (VmRSS, VmHWM = peak)
# before, right after and 3 s after. Usage: body_flood.py PORT PID mixed|bearer [KEY]
# (mixed: wrong bearer key and unknown SigV4 key id alternately; bearer: KEY as bearer).
import socket, sys, threading, time, datetime
port = int(sys.argv[1]); pid = int(sys.argv[2]); mode = sys.argv[3]; key = sys.argv[4] if len(sys.argv) > 4 else "tgk_wrong"
def rss():
    d = {}
    for l in open(f"/proc/{pid}/status"):
        k, v = l.split(":", 1); d[k] = v.strip()
    return d["VmRSS"], d["VmHWM"]
amz = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
def head(i):
    if mode == "bearer" or (mode == "mixed" and i % 2 == 0):
        auth = f"authorization: Bearer {key}\r\n"; path = "/v1/chat/completions"
    else:
        auth = (f"x-amz-date: {amz}\r\nauthorization: AWS4-HMAC-SHA256 Credential=tgk_unknown0000/{amz[:8]}/us-east-1/bedrock/aws4_request, "
                f"SignedHeaders=host;x-amz-date, Signature={'0'*64}\r\n"); path = "/model/gpt-4.1/converse"
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n").encode()
chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"   # 64 KiB
results = [None] * 12
def run(i):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(head(i)); sent = 0
    try:
        while sent < 30 << 20:
            s.sendall(chunk); sent += 0x10000
        s.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    s.settimeout(10)
    try:
        resp = s.recv(200).split(b"\r\n")[0].decode()
    except OSError as e:
        resp = f"(no response: {e})"
    results[i] = (sent >> 20, resp); s.close()
print("before", rss())
ts = [threading.Thread(target=run, args=(i,)) for i in range(12)]
t0 = time.time(); [t.start() for t in ts]; [t.join() for t in ts]
print("elapsed %.2fs" % (time.time() - t0))
for r in results: print("  sent MiB", r[0], "->", r[1])
print("right after", rss()); time.sleep(3); print("3 s idle", rss())
