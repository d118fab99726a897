package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/agentictrust/atf/attest"
	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// Login is a person's sign-in on the command line (atfctl login): the
// ID token their OpenID provider issued to atfctl's client, which the
// broker verifies on every call (docs/console.md, The command line).
// It is a bearer credential: kept in a file only its owner reads.
type Login struct {
	Issuer   string `json:"issuer"`
	ClientID string `json:"client_id"`
	IDToken  string `json:"id_token"`
	// Expiry is the ID token's; the broker may end the sign-in sooner
	// (console.session_ttl).
	Expiry time.Time `json:"expiry"`
	// Principal and Name say who signed in, for display.
	Principal string `json:"principal"`
	Name      string `json:"name,omitempty"`
	// BrokerID and BundleFile, if set, are how to reach the broker
	// without a Workload API (Config.BrokerID, Config.BundleFile).
	BrokerID   string `json:"broker_id,omitempty"`
	BundleFile string `json:"bundle_file,omitempty"`
}

// DeviceLogin signs a person in at issuer through the device
// authorization grant (RFC 8628) of the public client clientID, asking
// for scopes besides openid. prompt tells the person where to go and
// the code to enter there; DeviceLogin returns once they have allowed
// it at the provider, or when ctx ends or the code expires.
func DeviceLogin(ctx context.Context, issuer, clientID string, scopes []string, prompt func(uri, complete, code string)) (*Login, error) {
	p, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		return nil, fmt.Errorf("client: the OpenID provider %s: %w", issuer, err)
	}
	if p.Endpoint().DeviceAuthURL == "" {
		return nil, fmt.Errorf("client: the OpenID provider %s offers no device authorization grant (device_authorization_endpoint)", issuer)
	}
	ep := p.Endpoint()
	// A public client: its id in the form, no (empty) Basic credentials
	// for the provider to take as a confidential client's.
	ep.AuthStyle = oauth2.AuthStyleInParams
	oc := &oauth2.Config{ClientID: clientID, Endpoint: ep, Scopes: append([]string{oidc.ScopeOpenID}, scopes...)}
	da, err := oc.DeviceAuth(ctx)
	if err != nil {
		return nil, fmt.Errorf("client: the provider refused to start a device sign-in for client %s: %w", clientID, err)
	}
	prompt(da.VerificationURI, da.VerificationURIComplete, da.UserCode)
	tok, err := oc.DeviceAccessToken(ctx, da)
	if err != nil {
		return nil, fmt.Errorf("client: device sign-in: %w", err)
	}
	raw, ok := tok.Extra("id_token").(string)
	if !ok {
		return nil, errors.New("client: the provider sent no ID token")
	}
	idt, err := p.Verifier(&oidc.Config{ClientID: clientID}).Verify(ctx, raw)
	if err != nil {
		return nil, fmt.Errorf("client: the provider's ID token does not verify: %w", err)
	}
	var claims struct {
		Name     string `json:"name"`
		Username string `json:"preferred_username"`
	}
	_ = idt.Claims(&claims) // names are for display only
	l := &Login{Issuer: idt.Issuer, ClientID: clientID, IDToken: raw, Expiry: idt.Expiry,
		Principal: (&attest.Human{Issuer: idt.Issuer, Subject: idt.Subject}).Principal(), Name: claims.Name}
	if l.Name == "" {
		l.Name = claims.Username
	}
	return l, nil
}
