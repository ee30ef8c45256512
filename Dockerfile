FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# A regular (not editable) install: the migrations ship inside the package.
RUN pip install --no-cache-dir . && rm -rf /app/src
EXPOSE 8000 12111
# With no METERAPI_STRIPE_SECRET_KEY: the offline demo, the Stripe emulator's pages on port 12111.
CMD ["meterapi", "serve", "--host", "0.0.0.0", "--port", "8000", "--emulator-host", "0.0.0.0"]
