"""kbxy.platform.nginx, seen from inside each test host (traffic to 127.0.0.1 only)."""

import json
import re
import shlex
import time

import pytest

NAME = "shop.kbxy.test"
# Debian 13 runs selfsigned mode (the role's throwaway CA), Debian 12 provided
# mode (a certificate from the controller, signed by prepare.yml's test CA)
SELFSIGNED_CA = "/etc/nginx/tls/shop/ca.crt"
PROVIDED_CA = "/etc/kbxy-test-ca.crt"


def is_provided(host):
    return host.file(PROVIDED_CA).exists


def ca_of(host):
    return PROVIDED_CA if is_provided(host) else SELFSIGNED_CA


def curl_cmd(host):
    return f"curl -sS --max-time 10 --resolve {NAME}:443:127.0.0.1 --resolve {NAME}:80:127.0.0.1 --cacert {ca_of(host)}"


def curl(host, args):
    result = host.run(f"{curl_cmd(host)} {args}")
    assert result.rc == 0, result.stderr
    return result.stdout


def headers_of(host, path, extra=""):
    out = curl(host, f"-o /dev/null -D - {extra} https://{NAME}{path}")
    status = int(out.splitlines()[0].split()[1])
    headers = {}
    for line in out.splitlines()[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return status, headers


def s_client(host, options):
    return host.run(
        "timeout 10 openssl s_client -connect 127.0.0.1:443 "
        f"-servername {NAME} -CAfile {ca_of(host)} {options} </dev/null"
    )


def test_nginx_config_is_valid(host):
    result = host.run("nginx -t")
    assert result.rc == 0, result.stderr
    assert host.service("nginx").is_running
    assert host.service("nginx").is_enabled


def test_only_tls12_and_tls13_configured(host):
    dump = host.check_output("nginx -T 2>/dev/null")
    protocols = {line.strip() for line in dump.splitlines() if line.strip().startswith("ssl_protocols")}
    assert protocols == {"ssl_protocols TLSv1.2 TLSv1.3;"}
    assert "ssl_session_tickets off;" in dump


def test_worker_processes_leave_cores_to_the_local_app(host):
    # every upstream of the scenario is on the host (unix socket, 127.0.0.1): half the cores
    expected = max(1, int(host.check_output("nproc")) // 2)
    dump = host.check_output("nginx -T 2>/dev/null")
    assert f"worker_processes {expected};" in dump
    # the running workers too (a worker just replaced by a reload may take a moment to go)
    count = "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -cx 'nginx: worker process' || true"
    for _attempt in range(10):
        running = int(host.check_output(count))
        if running == expected:
            break
        time.sleep(0.5)
    assert running == expected


def test_testssl_rates_a_plus(host):
    # side_effect.yml ran testssl 3.2 (Debian 13) against this host's loopback,
    # trusting the site's throwaway CA; bookworm's testssl 3.0.8 cannot rate
    if host.system_info.codename != "trixie":
        pytest.skip("the TLS scan runs on Debian 13 (testssl 3.2)")
    run = json.loads(host.file("/var/tmp/kbxy-nginx-checks/testssl-run.json").content_string)
    findings = json.loads(host.file("/var/tmp/kbxy-nginx-checks/testssl.json").content_string)
    by_id = {item["id"]: item for item in findings}
    print(f"testssl: grade {by_id['overall_grade']['finding']}, score {by_id['final_score']['finding']}, "
          f"scan {run['seconds']} s, rc {run['rc']}")
    assert run["rc"] < 242
    # the scan saw this site: its certificate, trusted through the throwaway CA
    assert by_id["cert_commonName"]["finding"] == NAME
    assert by_id["cert_chain_of_trust"]["finding"].startswith("passed")
    assert by_id["overall_grade"]["finding"] == "A+"
    assert not [item["id"] for item in findings if item["id"].startswith("grade_cap")]
    assert [item["id"] for item in findings if item["severity"] in ("HIGH", "CRITICAL", "FATAL")] == []
    # "not offered" is the good outcome: no old protocol, no weak cipher class
    for weak in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT",
                 "cipherlist_LOW", "cipherlist_3DES_IDEA", "cipherlist_OBSOLETED"):
        assert by_id[weak]["finding"] == "not offered", by_id[weak]
    assert by_id["TLS1_2"]["finding"] == "offered"
    assert by_id["TLS1_3"]["finding"].startswith("offered")
    # every vulnerability the rating looks at came back not vulnerable
    for check in ("heartbleed", "CCS", "ROBOT", "CRIME_TLS", "POODLE_SSL", "DROWN", "BEAST", "LOGJAM", "RC4"):
        assert by_id[check]["finding"].startswith("not vulnerable"), by_id[check]


def test_http_redirects_to_https(host):
    out = curl(host, f"-o /dev/null -D - http://{NAME}/some/page?x=1")
    assert out.startswith("HTTP/1.1 301")
    assert f"location: https://{NAME}/some/page?x=1" in out.lower()


def test_acme_challenge_stays_on_http(host):
    host.run("install -m 0644 /dev/null /var/lib/kbxy-acme/webroot/.well-known/acme-challenge/probe")
    out = curl(host, f"-o /dev/null -w '%{{http_code}}' http://{NAME}/.well-known/acme-challenge/probe")
    assert out == "200"


@pytest.mark.parametrize("option", ["-tls1", "-tls1_1"])
def test_old_tls_refused(host, option):
    # SECLEVEL=0 lets Debian's OpenSSL client offer the old protocols, so the
    # refusal is the server's
    result = s_client(host, f"{option} -cipher DEFAULT@SECLEVEL=0")
    # the TCP connection was made and the server answered the old hello with an alert:
    # a refused or failed connection, or a client that could not offer the protocol, fails
    assert result.rc != 0, result.stdout
    assert "CONNECTED(" in result.stdout, (result.stdout, result.stderr)
    assert "no protocols available" not in result.stderr, result.stderr
    assert re.search(r"alert protocol version|unsupported protocol|wrong version number", result.stderr), result.stderr


@pytest.mark.parametrize("option,protocol", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_modern_tls_accepted(host, option, protocol):
    result = s_client(host, option)
    assert result.rc == 0, result.stderr
    assert f"Protocol  : {protocol}" in result.stdout or f"New, {protocol}" in result.stdout
    assert "Verify return code: 0 (ok)" in result.stdout


def test_http2_negotiated(host):
    assert curl(host, f"-o /dev/null -w '%{{http_version}}' https://{NAME}/") == "2"


def test_certificate_names_and_key(host):
    cert = host.check_output(
        f"timeout 10 openssl s_client -connect 127.0.0.1:443 -servername {NAME} </dev/null 2>/dev/null"
        " | openssl x509 -noout -subject -ext subjectAltName,crlDistributionPoints -text"
    )
    assert f"CN = {NAME}" in cert or f"CN={NAME}" in cert
    assert f"DNS:{NAME}" in cert and f"DNS:www.{NAME}" in cert
    assert "http://shop.kbxy.test/ca.crl" in cert
    assert "id-ecPublicKey" in cert and "prime256v1" in cert
    issuer = "kbxy provided-mode test CA" if is_provided(host) else "shop throwaway CA"
    issuer_line = next(line for line in cert.splitlines() if line.strip().startswith("Issuer:"))
    assert f"CN={issuer}" in issuer_line.replace(" = ", "=")


def test_tls_files_of_the_mode(host):
    key = host.file("/etc/nginx/tls/shop/privkey.pem")
    assert key.mode == 0o600 and key.user == "root"
    assert host.file("/etc/nginx/tls/shop").mode == 0o700
    # provided mode installs what it was given and makes no CA of its own
    assert host.file("/etc/nginx/tls/shop/ca.key").exists is not is_provided(host)


@pytest.mark.parametrize("path", ["/", "/assets/index-3f9a1c2b.js", "/api/echo", "/missing/asset.js"])
def test_security_headers_everywhere(host, path):
    status, headers = headers_of(host, path)
    assert status in (200, 404)
    assert headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "strict-origin-when-cross-origin"
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["server"] == "nginx"  # no version


def test_spa_deep_link_serves_index(host):
    body = curl(host, f"https://{NAME}/monsters/42/edit")
    assert "kbxy-spa-index" in body
    status, headers = headers_of(host, "/monsters/42/edit")
    assert status == 200
    assert headers["cache-control"] == "no-cache"


def test_hashed_asset_cached_and_compressed(host):
    status, headers = headers_of(host, "/assets/index-3f9a1c2b.js", "--compressed")
    assert status == 200
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert headers["content-encoding"] == "gzip"
    status, _headers = headers_of(host, "/assets/index-00000000.js")
    assert status == 404  # a missing asset is not answered by index.html


def test_api_reaches_upstream_with_client_address(host):
    # least_conn over the two stand-in instances (unix socket and TCP): sequential
    # requests alternate, so both must answer; one that never answers fails
    listeners = set()
    for _round in range(8):
        answer = json.loads(curl(host, f"-H 'X-Forwarded-For: 203.0.113.9' https://{NAME}/api/echo?q=1"))
        assert answer["path"] == "/api/echo?q=1"
        assert answer["x_real_ip"] == "127.0.0.1"
        # a forged X-Forwarded-For is replaced by the address nginx saw
        assert answer["x_forwarded_for"] == "127.0.0.1"
        assert answer["x_forwarded_proto"] == "https"
        assert answer["host"] == NAME
        listeners.add(answer["listener"])
        if listeners == {"unix", "tcp"}:
            break
    assert listeners == {"unix", "tcp"}


def test_access_log_buffered_and_flushed(host):
    # defaults: one write per 64k of lines, not per request, and a line is on
    # disk at most 1 s after its request even when no other request follows
    dump = host.check_output("nginx -T 2>/dev/null")
    logs = {line.strip() for line in dump.splitlines() if line.strip().startswith("access_log /var/log/nginx/shop_")}
    assert logs == {"access_log /var/log/nginx/shop_access.log combined buffer=64k flush=1s;"}
    marker = f"kbxy-log-probe-{time.time_ns()}"
    curl(host, f"-o /dev/null -A {marker} https://{NAME}/")  # static: outside the API rate limit
    written = host.run(f"for i in $(seq 50); do grep -q {marker} /var/log/nginx/shop_access.log && exit 0; sleep 0.2; done; exit 1")
    assert written.rc == 0, "the buffered access log line was not written within 10 s"


def test_extra_proxy_reaches_its_upstream_with_prefix_stripped(host):
    # vars/site.yml: /ai/ -> 127.0.0.1:8002, /files/v2/ -> unix:/run/echo-ai/echo.sock,
    # both served by the stand-in "ai", not the site's app ("main")
    answer = json.loads(curl(host, f"-H 'X-Forwarded-For: 203.0.113.9' https://{NAME}/ai/v1/upscale?scale=4"))
    assert answer["upstream"] == "ai" and answer["listener"] == "tcp"
    assert answer["path"] == "/v1/upscale?scale=4"
    assert answer["x_real_ip"] == answer["x_forwarded_for"] == "127.0.0.1"
    assert answer["x_forwarded_proto"] == "https"
    assert answer["host"] == NAME
    answer = json.loads(curl(host, f"https://{NAME}/files/v2/a/b.png"))
    assert answer["upstream"] == "ai" and answer["listener"] == "unix"
    assert answer["path"] == "/a/b.png"
    # the site's own API still reaches the site's app, prefix kept
    assert json.loads(curl(host, f"https://{NAME}/api/v1/upscale"))["upstream"] == "main"
    status, headers = headers_of(host, "/ai/v1/health")
    assert status == 200
    assert headers["strict-transport-security"].startswith("max-age=63072000")
    assert headers["x-frame-options"] == "DENY"


def test_extra_proxy_has_its_own_body_size_limit(host):
    # /ai/ accepts 1m, the rest of the site 50m
    host.check_output("head -c 1572864 /dev/zero >/var/tmp/kbxy-1.5m.bin && head -c 524288 /dev/zero >/var/tmp/kbxy-512k.bin")
    post = "-o /dev/null -w '%{http_code}' --data-binary @/var/tmp/kbxy-1.5m.bin"
    assert curl(host, f"{post} https://{NAME}/ai/v1/upscale") == "413"
    answer = json.loads(curl(host, f"--data-binary @/var/tmp/kbxy-1.5m.bin https://{NAME}/api/upload"))
    assert answer["upstream"] == "main" and answer["body_length"] == 1572864
    answer = json.loads(curl(host, f"--data-binary @/var/tmp/kbxy-512k.bin https://{NAME}/ai/v1/upscale"))
    assert answer["upstream"] == "ai" and answer["method"] == "POST" and answer["body_length"] == 524288


def test_extra_proxy_has_its_own_read_timeout(host):
    # /ai/ waits 2 s for its upstream, the API the site's 60 s
    assert curl(host, f"-o /dev/null -w '%{{http_code}}' https://{NAME}/ai/slow?sleep=3") == "504"
    assert curl(host, f"-o /dev/null -w '%{{http_code}}' https://{NAME}/api/slow?sleep=3") == "200"


def test_upstream_keepalive_timeout_below_uvicorn(host):
    site = host.file("/etc/nginx/kbxy/shop/site.conf").content_string
    assert "least_conn;" in site
    assert "keepalive_timeout 4s;" in site


def test_broken_value_failed_and_site_kept_answering(host):
    findings = json.loads(host.file("/var/tmp/kbxy-nginx-checks/broken.json").content_string)
    assert "[emerg]" in findings["message"] and "notaport" in findings["message"]
    assert findings["live_config_unchanged"] is True
    assert findings["status"] == 200 and "kbxy-spa-index" in findings["page"]
    assert "notaport" not in host.file("/etc/nginx/kbxy/shop/site.conf").content_string


def test_reload_under_load_dropped_nothing(host):
    findings = json.loads(host.file("/var/tmp/kbxy-nginx-checks/load.json").content_string)
    assert findings["failures"] == []
    assert findings["ok"] == findings["requests"] > 300
    assert findings["stopped_by_stop_file"] is True  # the load outlasted every reload
    # A retry is a keep-alive connection an old worker closed while idle after a reload:
    # at most once per keep-alive thread (2 of the client's 4) and reload. The reloads
    # are systemd's (the handler's and the ACME hook's `systemctl reload nginx`), counted
    # in the journal over the load's window. More retries mean connections were dropped
    # some other way.
    since, until = int(findings["started"]), int(findings["started"] + findings["seconds"]) + 2
    reloads = host.run(f"journalctl -u nginx.service --since @{since} --until @{until} -o cat --no-pager"
                       " | grep -c '^Reloaded'").stdout.strip()
    retried = findings.get("retried_on_new_connection", 0)
    print(f"\nreload under load: {findings['requests']} requests, {reloads} reloads, {retried} retried on a new connection")
    assert int(reloads or 0) >= 3, reloads  # the ACME site's reloads and the renewal hook's
    assert retried <= 2 * int(reloads), findings


def test_idle_upstream_keepalive_never_502(host):
    # side_effect.yml: nginx's cached upstream connections left idle for 3, 5
    # and 6 s while the stand-in (like uvicorn) closes idle ones after 5 s
    findings = json.loads(host.file("/var/tmp/kbxy-nginx-checks/idle.json").content_string)
    assert findings["bad"] == []
    assert findings["statuses"] == ["200"]
    assert findings["requests"] == findings["expected"] == 16
    assert findings["methods"] == ["GET", "POST"]
    assert max(findings["gaps"]) > 5
    # the cache was in use: some answers came over an upstream connection reused
    # by nginx, but never over one that had been idle for 5 s (closed by then)
    assert findings["reused_upstream_connections"] > 0
    assert 0 < findings["longest_idle_before_reuse_s"] < 5


ACME_NAME = "acme.kbxy.test"


def test_acme_certificate_issued_by_pebble(host):
    # the second site, issued over HTTP-01 by the local pebble in side_effect.yml;
    # pebble's root (from its management API) verifies the served chain
    host.check_output(
        "curl -sS --max-time 10 --cacert /etc/kbxy-pebble/cert.pem -o /var/tmp/kbxy-nginx-checks/pebble-root.pem"
        " https://localhost:15000/roots/0"
    )
    result = host.run(
        f"timeout 10 openssl s_client -connect 127.0.0.1:443 -servername {ACME_NAME} "
        "-CAfile /var/tmp/kbxy-nginx-checks/pebble-root.pem -verify_hostname " + ACME_NAME + " </dev/null"
    )
    assert result.rc == 0, result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout
    assert "Pebble Intermediate CA" in result.stdout
    # port 80 of the ACME site still redirects everything but the challenges
    out = host.check_output(
        f"curl -sS --max-time 10 --resolve {ACME_NAME}:80:127.0.0.1 -o /dev/null -D - http://{ACME_NAME}/x"
    )
    assert out.startswith("HTTP/1.1 301")


def test_acme_renewal_service_ran_and_reloaded(host):
    findings = json.loads(host.file("/var/tmp/kbxy-nginx-checks/acme.json").content_string)
    assert "Result=success" in findings["renewal_service"]
    assert "ExecMainStatus=0" in findings["renewal_service"]
    issued, renewed = findings["issued"].splitlines(), findings["renewed"].splitlines()
    assert issued[0].startswith("serial=") and renewed[0].startswith("serial=")
    assert issued[0] != renewed[0]  # a new certificate, served after the hook's reload
    assert "Pebble" in issued[1] and "Pebble" in renewed[1]
    timer = host.service("kbxy-acme-shop-acme.timer")
    assert timer.is_enabled and timer.is_running


def test_zz_rate_limit_answers_429_after_burst(host):
    # 60 r/m with a burst of 10: at most 40 quick requests, 10 s in all
    script = (
        f"for i in $(seq 1 40); do {curl_cmd(host)} -o /dev/null -w '%{{http_code}}\\n' https://{NAME}/api/limit; done"
    )
    codes = host.check_output(f"timeout 60 bash -c {shlex.quote(script)}").split()
    assert "429" in codes
    first_429 = codes.index("429")
    assert first_429 >= 5  # the burst was served
    assert set(codes[:first_429]) == {"200"}
    # static files are outside the API's limit
    assert curl(host, f"-o /dev/null -w '%{{http_code}}' https://{NAME}/") == "200"


def test_zz_extra_proxies_share_the_api_rate_limit(host):
    # one curl, one connection: 15 quick requests empty the API's budget
    # (burst 10), then /ai/ (rate_limit: true, the same zone) is refused at
    # once while /files/v2/ (rate_limit: false) is not limited
    urls = [f"https://{NAME}/api/limit"] * 15 + [f"https://{NAME}/ai/limit"] + [f"https://{NAME}/files/v2/limit"] * 3
    codes = curl(host, "-w '%{http_code}\\n' " + " ".join(f"-o /dev/null {url}" for url in urls)).split()
    assert len(codes) == len(urls)
    assert "429" in codes[:15]
    assert codes[15] == "429"
    assert codes[16:] == ["200"] * 3


def test_selfsigned_certificate_renewed_when_due(host):
    # side_effect.yml: a run with nginx_tls_selfsigned_renew_days beyond the validity re-signed
    # the site certificate (new serial, same throwaway CA) and nginx served it after the reload;
    # a run with the default window then kept it. Debian 12 serves a provided certificate.
    if host.system_info.codename != "trixie":
        pytest.skip("the shop site is self-signed on Debian 13 (provided on Debian 12)")
    findings = json.loads(host.file("/var/tmp/kbxy-nginx-checks/selfsigned-renewal.json").content_string)
    before, after = findings["before"].splitlines(), findings["after"].splitlines()
    assert before[0].startswith("serial=") and after[0].startswith("serial=")
    assert before[0] != after[0]
    assert before[1] == after[1] and "throwaway CA" in after[1]
    assert findings["kept"] == findings["after"]
    assert findings["valid_in_300_days"] is True
    served = host.check_output(
        "timeout 10 openssl s_client -connect 127.0.0.1:443 -servername shop.kbxy.test </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial"
    )
    assert served == after[0]
