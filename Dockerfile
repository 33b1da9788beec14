FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY usagehub ./usagehub
COPY device_profiles ./device_profiles
RUN pip install --no-cache-dir . && useradd --system usagehub && mkdir /data && chown usagehub /data
USER usagehub
ENV USAGEHUB_DATA_DIR=/data USAGEHUB_HTTP_HOST=0.0.0.0 USAGEHUB_HTTP_PORT=8000
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
ENTRYPOINT ["usagehub"]
CMD ["serve"]
